//! A second copy, beside the bundle log, of the notes a compaction leaves of the
//! indicators it dropped as expired (`dropped.notes` in the store directory).
//!
//! The notes live in the metadata ([`records::DROPPED`]), where `accept` reads them. The
//! metadata can be lost, and `entente store recover` rebuilds it from the log, which no
//! longer holds those indicators: without this file, a partner could then bring back a
//! version its origin had retired by letting it expire. A compaction appends its notes
//! here, synced, before it records them in the metadata; recovery reads them back.
//!
//! Format: an 8-byte magic, then records `length (u16, big-endian) | note | CRC-32 of
//! the note`, where a note is the metadata's key and value: `uuid (16) | modified
//! (i64, big-endian) | origin (UTF-8)`. A record cut short at the end (a crash while
//! appending) is passed over; a record whose CRC does not match ends the reading, and
//! recovery says so. A file that does not read to its end (cut short by a crash or a
//! full disk while appending, or damaged) is not appended to, since what follows the
//! point where reading stops would be lost: the next compaction, or the store when it
//! opens, writes it again whole from the metadata's notes.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::StoreError;
use super::log::sync_dir;
use super::records;

/// The file's name in the store directory.
pub const FILE: &str = "dropped.notes";
const MAGIC: &[u8; 8] = b"ENTDRP01";
/// Largest note: a UUID, a time and an origin id (at most 253 bytes).
const MAX_NOTE: usize = 16 + 8 + 256;

/// A note as the metadata holds it: the indicator's UUID and the value kept for it.
pub(super) type Note = ([u8; 16], Vec<u8>);

/// Appends `notes` (UUID and the metadata's value for it), synced.
pub(super) fn append(dir: &Path, notes: &[([u8; 16], Vec<u8>)]) -> Result<(), StoreError> {
    if notes.is_empty() {
        return Ok(());
    }
    let path = dir.join(FILE);
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    let created = !path.try_exists().map_err(io)?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    let fresh = file.metadata().map_err(io)?.len() == 0;
    let mut out = BufWriter::new(&file);
    if fresh {
        out.write_all(MAGIC).map_err(io)?;
    }
    write_records(&mut out, notes).map_err(io)?;
    out.flush().map_err(io)?;
    drop(out);
    file.sync_data().map_err(io)?;
    if created {
        sync_dir(&path).map_err(io)?;
    }
    Ok(())
}

/// What [`read`] found.
#[derive(Debug, Default)]
pub struct Notes {
    /// `(metadata key, metadata value)` of each note, in the order written.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    /// Why reading stopped before the end, if it did.
    pub problem: Option<String>,
    /// The file ends with a record cut short (a crash or a full disk while appending):
    /// what is appended after it could not be read.
    pub cut: bool,
}

impl Notes {
    /// Whether the file, if any, reads to its end: one can be appended to.
    fn whole(&self) -> bool {
        self.problem.is_none() && !self.cut
    }
}

/// Appends `notes` as [`append`] does; when the file cannot be read to its end (damaged,
/// or cut short by a crash or a full disk while an earlier append wrote it), so that what
/// is appended after that point would be lost to a recovery, writes it again whole
/// instead: every note `held` gives (the metadata's), then `notes`.
pub(super) fn keep(
    dir: &Path,
    notes: &[([u8; 16], Vec<u8>)],
    held: impl FnOnce() -> Result<Vec<Note>, StoreError>,
) -> Result<(), StoreError> {
    if notes.is_empty() {
        return Ok(());
    }
    if whole(dir)? {
        return append(dir, notes);
    }
    let mut all = held()?;
    all.extend_from_slice(notes);
    rewrite(dir, &all)
}

/// Makes sure the file holds what `held` gives (every note the metadata holds, none of
/// which may be lost): written whole when it does not exist or cannot be read to its
/// end. `held` is read only then.
pub(super) fn ensure(
    dir: &Path,
    held: impl FnOnce() -> Result<Vec<Note>, StoreError>,
) -> Result<(), StoreError> {
    let path = dir.join(FILE);
    let exists = path.try_exists().map_err(|source| StoreError::Io {
        path: path.clone(),
        source,
    })?;
    if exists && whole(dir)? {
        return Ok(());
    }
    let held = held()?;
    if held.is_empty() {
        return Ok(());
    }
    rewrite(dir, &held)
}

/// Writes the file again with `notes` only, synced: beside it first, then in its place.
fn rewrite(dir: &Path, notes: &[([u8; 16], Vec<u8>)]) -> Result<(), StoreError> {
    let path = dir.join(FILE);
    let temporary = dir.join(format!("{FILE}.new"));
    let io = |at: &Path| {
        let at = at.to_path_buf();
        move |source| StoreError::Io { path: at, source }
    };
    let _ = std::fs::remove_file(&temporary);
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&temporary)
        .map_err(io(&temporary))?;
    let written = (|| {
        let mut out = BufWriter::new(&file);
        out.write_all(MAGIC)?;
        write_records(&mut out, notes)?;
        out.flush()?;
        drop(out);
        file.sync_all()
    })();
    drop(file);
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(io(&temporary)(source));
    }
    if let Err(source) = std::fs::rename(&temporary, &path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(io(&path)(source));
    }
    sync_dir(&path).map_err(io(&path))
}

/// Writes each note as a record (a note too long for the format is passed over).
fn write_records(out: &mut impl Write, notes: &[([u8; 16], Vec<u8>)]) -> std::io::Result<()> {
    for (uuid, value) in notes {
        let mut note = Vec::with_capacity(16 + value.len());
        note.extend_from_slice(uuid);
        note.extend_from_slice(value);
        if note.len() > MAX_NOTE {
            continue;
        }
        let len = u16::try_from(note.len()).unwrap_or(u16::MAX);
        out.write_all(&len.to_be_bytes())?;
        out.write_all(&note)?;
        out.write_all(&crc32fast::hash(&note).to_be_bytes())?;
    }
    Ok(())
}

/// Reads the notes kept in `dir` (none when the file does not exist).
pub(super) fn read(dir: &Path) -> Result<Notes, StoreError> {
    scan(dir, true)
}

/// Whether the file, if any, reads to its end (its notes are checked, not kept).
fn whole(dir: &Path) -> Result<bool, StoreError> {
    Ok(scan(dir, false)?.whole())
}

/// Reads the file in `dir`, keeping its notes in [`Notes::records`] when `keep` is set.
fn scan(dir: &Path, keep: bool) -> Result<Notes, StoreError> {
    let path = dir.join(FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Notes::default()),
        Err(source) => return Err(StoreError::Io { path, source }),
    };
    let mut input = BufReader::new(file);
    let mut notes = Notes::default();
    let mut magic = [0u8; 8];
    if read_whole(&mut input, &mut magic, &path)? < magic.len() {
        notes.problem = Some("the file is shorter than its header".into());
        return Ok(notes);
    }
    if &magic != MAGIC {
        notes.problem = Some("the file does not start as a notes file does".into());
        return Ok(notes);
    }
    let mut at = MAGIC.len() as u64;
    loop {
        let mut len = [0u8; 2];
        match read_whole(&mut input, &mut len, &path)? {
            2 => {}
            0 => break,
            _ => {
                notes.cut = true;
                break;
            }
        }
        let len = usize::from(u16::from_be_bytes(len));
        if !(16 + 8..=MAX_NOTE).contains(&len) {
            notes.problem = Some(format!("a record at byte {at} has a length of {len}"));
            break;
        }
        let mut note = vec![0u8; len + 4];
        if read_whole(&mut input, &mut note, &path)? < note.len() {
            // Cut short by a crash or a full disk while appending: nothing after it was
            // acknowledged (the next append writes the file again whole).
            notes.cut = true;
            break;
        }
        let (note, crc) = note.split_at(len);
        if crc32fast::hash(note).to_be_bytes() != crc {
            notes.problem = Some(format!("the record at byte {at} fails its CRC"));
            break;
        }
        if keep {
            let (uuid, value) = note.split_at(16);
            notes
                .records
                .push((records::key(records::DROPPED, uuid), value.to_vec()));
        }
        at += 2 + len as u64 + 4;
    }
    Ok(notes)
}

/// Fills `buf` from `input`: the bytes read, fewer than its length at the end of the
/// file.
fn read_whole(input: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<usize, StoreError> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => return Ok(filled),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(n: u8) -> ([u8; 16], Vec<u8>) {
        let mut value = (i64::from(n) * 1000).to_be_bytes().to_vec();
        value.extend_from_slice(b"redmond.hq");
        ([n; 16], value)
    }

    #[test]
    fn notes_read_back_as_written_and_a_cut_end_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().records.is_empty());
        append(dir.path(), &[note(1), note(2)]).unwrap();
        append(dir.path(), &[note(3)]).unwrap();
        let read_back = read(dir.path()).unwrap();
        assert_eq!(read_back.problem, None);
        let expected: Vec<(Vec<u8>, Vec<u8>)> = (1..=3)
            .map(|n| {
                let (uuid, value) = note(n);
                (records::key(records::DROPPED, &uuid), value)
            })
            .collect();
        assert_eq!(read_back.records, expected);
        // Every cut of the last record: the two before it, no problem.
        let path = dir.path().join(FILE);
        let whole = std::fs::read(&path).unwrap();
        let last = 2 + 16 + 8 + "redmond.hq".len() + 4;
        for cut in 1..last {
            std::fs::write(&path, &whole[..whole.len() - cut]).unwrap();
            let read_back = read(dir.path()).unwrap();
            assert_eq!(read_back.records.len(), 2, "{cut}");
            assert_eq!(read_back.problem, None, "{cut}");
            assert!(read_back.cut, "{cut}");
        }
        // A flipped byte in the second record: the first only, and a problem named.
        let mut damaged = whole.clone();
        damaged[8 + last + 20] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        let read_back = read(dir.path()).unwrap();
        assert_eq!(read_back.records.len(), 1);
        assert!(read_back.problem.unwrap().contains("CRC"));
        // Not a notes file at all.
        std::fs::write(&path, b"garbage!garbage!").unwrap();
        let read_back = read(dir.path()).unwrap();
        assert!(read_back.records.is_empty() && read_back.problem.is_some());
    }

    #[test]
    fn notes_kept_after_a_cut_append_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        keep(dir.path(), &[note(1)], || Ok(Vec::new())).unwrap();
        // An append cut short: the next keeps every note, from the metadata's copy.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0, 40, 1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();
        keep(dir.path(), &[note(3)], || Ok(vec![note(1), note(2)])).unwrap();
        let read_back = read(dir.path()).unwrap();
        assert!(read_back.whole());
        assert_eq!(read_back.records.len(), 3);
        // A file cut inside its header, or missing: written whole when the store opens.
        std::fs::write(&path, &MAGIC[..3]).unwrap();
        ensure(dir.path(), || Ok(vec![note(1), note(2)])).unwrap();
        assert_eq!(read(dir.path()).unwrap().records.len(), 2);
        std::fs::remove_file(&path).unwrap();
        ensure(dir.path(), || Ok(vec![note(1)])).unwrap();
        assert_eq!(read(dir.path()).unwrap().records.len(), 1);
        // Whole: left as it is.
        ensure(dir.path(), || Ok(vec![note(4)])).unwrap();
        assert_eq!(read(dir.path()).unwrap().records.len(), 1);
    }
}
