//! The compact on-disk form of the disclosure ledger: one segment file's header, its
//! frames, and the per-segment dictionary that turns partner ids, paths, policy hashes
//! and bundle ids into small numbers. Pure functions over bytes; which file is written
//! when is `files.rs`'s business.
//!
//! ```text
//! segment   := header frame*
//! header    := "ENTLDG\0\x01" | store id (16) | start seq u64 BE | start hash (32) | crc32 LE of the above
//! frame     := body_len varint | body | crc32 LE of body
//! body      := 0x01 first_seq varint | link (8) | count varint | entry{count}   (records)
//!            | 0x02 seq varint | hash (32)                                      (checkpoint)
//! entry     := flags varint | time delta zigzag varint
//!              | partner ref | path ref | policy ref
//!              | deliveries varint | (bundle ref | n varint | index delta zigzag varint{n}){deliveries}
//!              | [note_len varint | note]                                       (flags bit 0)
//! ref       := varint i; i < table length names an entry, i == table length defines
//!              the next one inline (partner and path: len varint | UTF-8; policy: 32
//!              bytes; bundle: 16 bytes)
//! ```
//!
//! The header's start is a checkpoint: the sequence number of the record before the
//! segment's first (0 for the first segment of a ledger) and the chain hash there. A
//! records frame's link is the first 8 bytes of the chain hash of the record before
//! it: it lets a walk name the altered record, while the full-length checkpoints and
//! the head carry the proof. Times are deltas from the segment's previous entry (the
//! first from 0). A dictionary lives as long as its segment, so every segment decodes
//! on its own.

use std::collections::HashMap;

use super::Head;
use crate::model::{BundleId, NodeId};
use crate::store::LedgerEntry;

/// The first bytes of every segment file (format 1 of the segment layout).
pub const MAGIC: &[u8; 8] = b"ENTLDG\0\x01";

/// Length of a segment header.
pub const HEADER_BYTES: usize = 8 + 16 + 8 + 32 + 4;

/// The largest frame body written or read.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// Most entries of one dictionary table; a segment whose table is this full is closed.
pub const MAX_TABLE: usize = 1 << 16;

/// Longest partner id or path accepted in a segment.
const MAX_NAME_BYTES: usize = 1024;

/// Longest note accepted in a segment.
const MAX_NOTE_BYTES: usize = 64 * 1024;

const KIND_RECORDS: u8 = 1;
const KIND_CHECKPOINT: u8 = 2;
const FLAG_NOTE: u64 = 1;

/// A segment's header: whose store it belongs to and where in the chain it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The store id (as in the bundle log's header).
    pub store_id: [u8; 16],
    /// The record before the segment's first, and the chain hash there.
    pub start: Head,
}

impl SegmentHeader {
    /// The stored form.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[..8].copy_from_slice(MAGIC);
        out[8..24].copy_from_slice(&self.store_id);
        out[24..32].copy_from_slice(&self.start.seq.to_be_bytes());
        out[32..64].copy_from_slice(&self.start.hash);
        let crc = crc32fast::hash(&out[..64]);
        out[64..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses the first [`HEADER_BYTES`] of a segment file.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let Some(bytes) = bytes.get(..HEADER_BYTES) else {
            return Err(format!(
                "the header is cut short ({} bytes, not {HEADER_BYTES})",
                bytes.len()
            ));
        };
        if &bytes[..8] != MAGIC {
            return Err("it does not start as a ledger segment".into());
        }
        let crc = u32::from_le_bytes([bytes[64], bytes[65], bytes[66], bytes[67]]);
        if crc32fast::hash(&bytes[..64]) != crc {
            return Err("its header does not match its checksum".into());
        }
        let mut store_id = [0u8; 16];
        store_id.copy_from_slice(&bytes[8..24]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&bytes[24..32]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&bytes[32..64]);
        Ok(Self {
            store_id,
            start: Head {
                seq: u64::from_be_bytes(seq),
                hash,
            },
        })
    }
}

/// The dictionary of one segment as read: table entries in the order defined.
#[derive(Clone, Debug, Default)]
pub struct Dictionary {
    partners: Vec<NodeId>,
    paths: Vec<String>,
    policies: Vec<[u8; 32]>,
    bundles: Vec<[u8; 16]>,
    /// The time of the segment's last entry.
    last_time_ms: i64,
}

/// The writer's side of a dictionary: the tables and their reverse maps.
#[derive(Debug, Default)]
pub struct Interner {
    dict: Dictionary,
    partner_ix: HashMap<String, u64>,
    path_ix: HashMap<String, u64>,
    policy_ix: HashMap<[u8; 32], u64>,
    bundle_ix: HashMap<[u8; 16], u64>,
}

/// The table lengths and time at one moment, to undo a frame that was not written.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    partners: usize,
    paths: usize,
    policies: usize,
    bundles: usize,
    last_time_ms: i64,
}

impl Interner {
    /// The interner of a segment read back (to go on appending to it).
    pub fn from_dictionary(dict: Dictionary) -> Self {
        let ix = |i: usize| i as u64;
        Self {
            partner_ix: dict
                .partners
                .iter()
                .enumerate()
                .map(|(i, p)| (p.as_str().to_owned(), ix(i)))
                .collect(),
            path_ix: dict
                .paths
                .iter()
                .enumerate()
                .map(|(i, p)| (p.clone(), ix(i)))
                .collect(),
            policy_ix: dict
                .policies
                .iter()
                .enumerate()
                .map(|(i, p)| (*p, ix(i)))
                .collect(),
            bundle_ix: dict
                .bundles
                .iter()
                .enumerate()
                .map(|(i, b)| (*b, ix(i)))
                .collect(),
            dict,
        }
    }

    /// Whether a table is full: the segment should be closed.
    pub fn is_full(&self) -> bool {
        let d = &self.dict;
        [
            d.partners.len(),
            d.paths.len(),
            d.policies.len(),
            d.bundles.len(),
        ]
        .into_iter()
        .any(|n| n >= MAX_TABLE)
    }

    /// The state now, for [`Interner::rollback`].
    pub fn mark(&self) -> Mark {
        Mark {
            partners: self.dict.partners.len(),
            paths: self.dict.paths.len(),
            policies: self.dict.policies.len(),
            bundles: self.dict.bundles.len(),
            last_time_ms: self.dict.last_time_ms,
        }
    }

    /// Forgets every definition made after `mark` (their frame was not written).
    pub fn rollback(&mut self, mark: Mark) {
        for p in self.dict.partners.drain(mark.partners..) {
            self.partner_ix.remove(p.as_str());
        }
        for p in self.dict.paths.drain(mark.paths..) {
            self.path_ix.remove(&p);
        }
        for p in self.dict.policies.drain(mark.policies..) {
            self.policy_ix.remove(&p);
        }
        for b in self.dict.bundles.drain(mark.bundles..) {
            self.bundle_ix.remove(&b);
        }
        self.dict.last_time_ms = mark.last_time_ms;
    }

    fn name(
        out: &mut Vec<u8>,
        ix: &mut HashMap<String, u64>,
        table_len: usize,
        name: &str,
    ) -> bool {
        match ix.get(name) {
            Some(&i) => {
                put_varint(out, i);
                false
            }
            None => {
                put_varint(out, table_len as u64);
                put_varint(out, name.len() as u64);
                out.extend_from_slice(name.as_bytes());
                ix.insert(name.to_owned(), table_len as u64);
                true
            }
        }
    }

    /// Appends the encoding of `entry` to `out`, defining what it names first.
    fn entry(&mut self, entry: &LedgerEntry, out: &mut Vec<u8>) {
        let flags = if entry.note.is_empty() { 0 } else { FLAG_NOTE };
        put_varint(out, flags);
        put_varint(
            out,
            zigzag(entry.time_ms.wrapping_sub(self.dict.last_time_ms)),
        );
        self.dict.last_time_ms = entry.time_ms;
        let len = self.dict.partners.len();
        if Self::name(out, &mut self.partner_ix, len, entry.partner.as_str()) {
            self.dict.partners.push(entry.partner.clone());
        }
        let len = self.dict.paths.len();
        if Self::name(out, &mut self.path_ix, len, &entry.path) {
            self.dict.paths.push(entry.path.clone());
        }
        match self.policy_ix.get(&entry.policy_hash) {
            Some(&i) => put_varint(out, i),
            None => {
                let i = self.dict.policies.len() as u64;
                put_varint(out, i);
                out.extend_from_slice(&entry.policy_hash);
                self.policy_ix.insert(entry.policy_hash, i);
                self.dict.policies.push(entry.policy_hash);
            }
        }
        put_varint(out, entry.deliveries.len() as u64);
        for (bundle, indices) in &entry.deliveries {
            let uuid = bundle.uuid_bytes();
            match self.bundle_ix.get(&uuid) {
                Some(&i) => put_varint(out, i),
                None => {
                    let i = self.dict.bundles.len() as u64;
                    put_varint(out, i);
                    out.extend_from_slice(&uuid);
                    self.bundle_ix.insert(uuid, i);
                    self.dict.bundles.push(uuid);
                }
            }
            put_varint(out, indices.len() as u64);
            let mut prev = 0i64;
            for &index in indices {
                put_varint(out, zigzag(i64::from(index) - prev));
                prev = i64::from(index);
            }
        }
        if !entry.note.is_empty() {
            put_varint(out, entry.note.len() as u64);
            out.extend_from_slice(entry.note.as_bytes());
        }
    }

    /// The body of a records frame for `entries`, the first numbered `first_seq`,
    /// linked to the record before by `link`.
    pub fn records_body(
        &mut self,
        first_seq: u64,
        link: &[u8; 8],
        entries: &[LedgerEntry],
    ) -> Vec<u8> {
        let mut body = Vec::with_capacity(16 + entries.len() * 24);
        body.push(KIND_RECORDS);
        put_varint(&mut body, first_seq);
        body.extend_from_slice(link);
        put_varint(&mut body, entries.len() as u64);
        for entry in entries {
            self.entry(entry, &mut body);
        }
        body
    }
}

/// The body of a checkpoint frame at `head`.
pub fn checkpoint_body(head: &Head) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + 10 + 32);
    body.push(KIND_CHECKPOINT);
    put_varint(&mut body, head.seq);
    body.extend_from_slice(&head.hash);
    body
}

/// Appends `body` as a frame (length, body, checksum) to `out`.
pub fn put_frame(out: &mut Vec<u8>, body: &[u8]) {
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
}

/// The first 8 bytes of a chain hash: a records frame's link.
pub fn link_of(hash: &[u8; 32]) -> [u8; 8] {
    let mut link = [0u8; 8];
    link.copy_from_slice(&hash[..8]);
    link
}

/// One frame found in a segment's bytes.
#[derive(Debug)]
pub struct RawFrame<'a> {
    /// Where the next frame starts.
    pub end: usize,
    /// Its body.
    pub body: &'a [u8],
    /// Whether the body matches its checksum.
    pub crc_ok: bool,
}

/// What lies at a position of a segment.
#[derive(Debug)]
pub enum Next<'a> {
    /// A frame (whose checksum may not match).
    Frame(RawFrame<'a>),
    /// The end of the file.
    End,
    /// Bytes that are not a whole frame: a length that does not read, or a frame
    /// that runs past the end of the file.
    Cut(String),
}

/// The frame at `at` in a segment's bytes.
pub fn next_frame(bytes: &[u8], at: usize) -> Next<'_> {
    if at >= bytes.len() {
        return Next::End;
    }
    let mut pos = at;
    let Some(len) = get_varint(bytes, &mut pos) else {
        return Next::Cut("a frame length does not read".into());
    };
    let Ok(len) = usize::try_from(len) else {
        return Next::Cut(format!("a frame claims {len} bytes"));
    };
    if len == 0 || len > MAX_FRAME_BYTES {
        return Next::Cut(format!("a frame claims {len} bytes"));
    }
    let Some(end) = pos.checked_add(len).and_then(|e| e.checked_add(4)) else {
        return Next::Cut(format!("a frame claims {len} bytes"));
    };
    let Some(body) = bytes.get(pos..pos + len) else {
        return Next::Cut("a frame runs past the end of the file".into());
    };
    let Some(crc) = bytes.get(pos + len..end) else {
        return Next::Cut("a frame runs past the end of the file".into());
    };
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    Next::Frame(RawFrame {
        end,
        body,
        crc_ok: crc32fast::hash(body) == crc,
    })
}

/// The first record a records frame names, read without its dictionary (`None` for
/// a checkpoint or a body that does not read).
pub fn first_of(body: &[u8]) -> Option<u64> {
    if body.first() != Some(&KIND_RECORDS) {
        return None;
    }
    let mut pos = 1;
    get_varint(body, &mut pos)
}

/// A frame decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Records numbered from `first`.
    Records {
        /// The first record's sequence number.
        first: u64,
        /// The first 8 bytes of the chain hash of record `first - 1`.
        link: [u8; 8],
        /// The records' content.
        entries: Vec<LedgerEntry>,
    },
    /// The chain hash at a record.
    Checkpoint(Head),
}

/// Decodes a frame body, reading and extending `dict` (left as it was if the body
/// does not decode).
pub fn decode_body(body: &[u8], dict: &mut Dictionary) -> Result<Frame, String> {
    let lens = (
        dict.partners.len(),
        dict.paths.len(),
        dict.policies.len(),
        dict.bundles.len(),
        dict.last_time_ms,
    );
    decode_into(body, dict).inspect_err(|_| {
        dict.partners.truncate(lens.0);
        dict.paths.truncate(lens.1);
        dict.policies.truncate(lens.2);
        dict.bundles.truncate(lens.3);
        dict.last_time_ms = lens.4;
    })
}

fn decode_into(body: &[u8], dict: &mut Dictionary) -> Result<Frame, String> {
    let mut r = Reader {
        bytes: body,
        pos: 0,
    };
    match r.byte()? {
        KIND_CHECKPOINT => {
            let seq = r.varint()?;
            let hash = r.array::<32>()?;
            r.end()?;
            Ok(Frame::Checkpoint(Head { seq, hash }))
        }
        KIND_RECORDS => {
            let first = r.varint()?;
            let link = r.array::<8>()?;
            let count = r.count()?;
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                entries.push(decode_entry(&mut r, dict)?);
            }
            r.end()?;
            if entries.is_empty() {
                return Err("a records frame holds no record".into());
            }
            if first == 0 || first.checked_add(entries.len() as u64).is_none() {
                return Err(format!("records numbered from {first} cannot be"));
            }
            Ok(Frame::Records {
                first,
                link,
                entries,
            })
        }
        other => Err(format!("a frame of unknown kind {other}")),
    }
}

fn decode_entry(r: &mut Reader<'_>, dict: &mut Dictionary) -> Result<LedgerEntry, String> {
    let flags = r.varint()?;
    if flags & !FLAG_NOTE != 0 {
        return Err(format!("unknown record flags {flags:#x}"));
    }
    let delta = unzigzag(r.varint()?);
    let time_ms = dict.last_time_ms.wrapping_add(delta);
    dict.last_time_ms = time_ms;
    let partner = match r.reference(dict.partners.len())? {
        Some(i) => dict.partners[i].clone(),
        None => {
            let name = r.text(MAX_NAME_BYTES)?;
            let id = NodeId::new(&name).map_err(|e| format!("partner: {e}"))?;
            dict.partners.push(id.clone());
            id
        }
    };
    let path = match r.reference(dict.paths.len())? {
        Some(i) => dict.paths[i].clone(),
        None => {
            let path = r.text(MAX_NAME_BYTES)?;
            dict.paths.push(path.clone());
            path
        }
    };
    let policy_hash = match r.reference(dict.policies.len())? {
        Some(i) => dict.policies[i],
        None => {
            let hash = r.array::<32>()?;
            dict.policies.push(hash);
            hash
        }
    };
    let n = r.count()?;
    let mut deliveries = Vec::with_capacity(n);
    for _ in 0..n {
        let uuid = match r.reference(dict.bundles.len())? {
            Some(i) => dict.bundles[i],
            None => {
                let uuid = r.array::<16>()?;
                dict.bundles.push(uuid);
                uuid
            }
        };
        let k = r.count()?;
        let mut indices = Vec::with_capacity(k);
        let mut prev = 0i64;
        for _ in 0..k {
            let index = prev
                .checked_add(unzigzag(r.varint()?))
                .and_then(|i| u32::try_from(i).ok())
                .ok_or("an item index out of range")?;
            indices.push(index);
            prev = i64::from(index);
        }
        deliveries.push((BundleId::from_uuid_bytes(uuid), indices));
    }
    let note = if flags & FLAG_NOTE != 0 {
        let note = r.text(MAX_NOTE_BYTES)?;
        if note.is_empty() {
            return Err("an empty note is flagged".into());
        }
        note
    } else {
        String::new()
    };
    Ok(LedgerEntry {
        time_ms,
        partner,
        path,
        deliveries,
        policy_hash,
        note,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.pos).ok_or("cut short")?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, String> {
        get_varint(self.bytes, &mut self.pos).ok_or_else(|| "a number does not read".into())
    }

    /// A count of elements that each take at least one byte: never more than the
    /// bytes left, so nothing is allocated for what is not there.
    fn count(&mut self) -> Result<usize, String> {
        let n = self.varint()?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(format!("a count of {n} with {left} bytes left"));
        }
        Ok(n as usize)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let got = self.bytes.get(self.pos..self.pos + N).ok_or("cut short")?;
        self.pos += N;
        let mut out = [0u8; N];
        out.copy_from_slice(got);
        Ok(out)
    }

    fn text(&mut self, max: usize) -> Result<String, String> {
        let len = self.varint()?;
        if len > max as u64 {
            return Err(format!("a text of {len} bytes (at most {max})"));
        }
        let len = len as usize;
        let got = self
            .bytes
            .get(self.pos..self.pos + len)
            .ok_or("cut short")?;
        self.pos += len;
        String::from_utf8(got.to_vec()).map_err(|_| "a text is not UTF-8".into())
    }

    /// A table reference: `Some(i)` for a defined entry, `None` when the entry is
    /// defined here.
    fn reference(&mut self, table_len: usize) -> Result<Option<usize>, String> {
        let i = self.varint()?;
        match i.cmp(&(table_len as u64)) {
            std::cmp::Ordering::Less => Ok(Some(i as usize)),
            std::cmp::Ordering::Equal if table_len < MAX_TABLE => Ok(None),
            _ => Err(format!(
                "a reference to entry {i} of a table of {table_len}"
            )),
        }
    }

    fn end(&self) -> Result<(), String> {
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            Err(format!("{} bytes left over", self.bytes.len() - self.pos))
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A LEB128 number at `*pos`; `None` if cut short, longer than 10 bytes, or not in
/// its shortest form (so every number has one encoding).
fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = *bytes.get(*pos + i)?;
        if i == 9 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return None;
            }
            *pos += i + 1;
            return Some(v);
        }
    }
    None
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> LedgerEntry {
        LedgerEntry {
            time_ms: 1_700_000_000_000 + i as i64 * 3,
            partner: NodeId::new(if i % 2 == 0 {
                "berlin.office"
            } else {
                "paris.cert"
            })
            .unwrap(),
            path: "query".into(),
            deliveries: vec![
                (BundleId::from_uuid_bytes([i as u8; 16]), vec![0, 3, 7]),
                (BundleId::from_uuid_bytes([1; 16]), vec![9, 2, 2]),
            ],
            policy_hash: [7; 32],
            note: if i == 3 {
                "a note".into()
            } else {
                String::new()
            },
        }
    }

    #[test]
    fn frames_round_trip_through_their_dictionary() {
        let mut interner = Interner::default();
        let mut bytes = Vec::new();
        let first: Vec<LedgerEntry> = (1..=3).map(entry).collect();
        put_frame(&mut bytes, &interner.records_body(1, &[5; 8], &first));
        let head = Head {
            seq: 3,
            hash: [9; 32],
        };
        put_frame(&mut bytes, &checkpoint_body(&head));
        let second = vec![entry(4), entry(1)];
        put_frame(&mut bytes, &interner.records_body(4, &[6; 8], &second));
        let mut dict = Dictionary::default();
        let mut at = 0;
        let mut frames = Vec::new();
        while let Next::Frame(raw) = next_frame(&bytes, at) {
            assert!(raw.crc_ok);
            frames.push(decode_body(raw.body, &mut dict).unwrap());
            at = raw.end;
        }
        assert_eq!(at, bytes.len());
        assert_eq!(
            frames,
            vec![
                Frame::Records {
                    first: 1,
                    link: [5; 8],
                    entries: first
                },
                Frame::Checkpoint(head),
                Frame::Records {
                    first: 4,
                    link: [6; 8],
                    entries: second
                },
            ]
        );
    }

    #[test]
    fn a_rolled_back_frame_leaves_no_definition() {
        let mut interner = Interner::default();
        let mark = interner.mark();
        interner.records_body(1, &[0; 8], &[entry(1)]);
        interner.rollback(mark);
        let body = interner.records_body(1, &[0; 8], &[entry(2)]);
        let mut dict = Dictionary::default();
        assert!(decode_body(&body, &mut dict).is_ok());
    }

    #[test]
    fn headers_round_trip_and_refuse_damage() {
        let header = SegmentHeader {
            store_id: [3; 16],
            start: Head {
                seq: 41,
                hash: [8; 32],
            },
        };
        let mut bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        bytes[30] ^= 1;
        assert!(SegmentHeader::decode(&bytes).is_err());
        assert!(SegmentHeader::decode(&bytes[..10]).is_err());
    }

    #[test]
    fn varints_have_one_form() {
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut pos = 0;
            assert_eq!(get_varint(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
        }
        let mut pos = 0;
        assert_eq!(get_varint(&[0x80, 0x00], &mut pos), None);
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut dict = Dictionary::default();
        for len in 0..64usize {
            let body: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let _ = decode_body(&body, &mut dict);
            let _ = next_frame(&body, 0);
        }
    }
}
