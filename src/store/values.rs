//! Values too large for sled, each a file of its own under `<data_dir>/values/`: feed
//! checkpoints (a MISP feed's holds every event and attribute uuid it took) and TAXII
//! write statuses (up to 1 MiB each). Owns that directory and nothing else; it knows
//! nothing of what the values mean.
//!
//! sled 0.34 keeps a large value as a blob file and never removes the blob a later
//! write superseded, so a value rewritten often grew sled's files without bound. A file
//! here is replaced whole: written to a temporary file beside it, synced, renamed over
//! the old one and the directory synced, so a crash leaves the old value or the new
//! one, never a mix, and a replaced value takes no room once replaced.
//!
//! A value's file is named after the SHA-256 of its name (`<64 hex digits>.val`), so
//! no name, whoever chose it, can reach outside the directory or collide with another
//! file there. The file holds its name as well, so values can be listed by name:
//! `"ENTVAL01" | name length (u32, big-endian) | value length (u64, big-endian) |
//! CRC-32 of name and value (u32, big-endian) | name | value`. A file that is not of
//! this form, does not carry the name asked for, is larger than [`MAX_VALUE_BYTES`]
//! or fails its CRC is damaged: it reads as absent, with a warning naming the file, as
//! a value that does not decode reads to the code that kept it (a feed takes its
//! source again, a status is gone). The directory and its files are readable by their
//! owner only.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::StoreError;

/// The directory's name in the data directory.
pub const DIR: &str = "values";
/// Largest value kept: a larger one is refused when written, and a file claiming more
/// is damaged. A MISP checkpoint takes about 40 bytes per attribute (11 MiB for
/// 300,000), a TAXII status at most 1 MiB.
pub const MAX_VALUE_BYTES: u64 = 256 << 20;
/// Longest name: a TAXII status's (a prefix, a node id of at most 253 bytes, a slot).
const MAX_NAME_BYTES: usize = 1024;
const MAGIC: &[u8; 8] = b"ENTVAL01";
const HEADER_BYTES: usize = 8 + 4 + 8 + 4;
const SUFFIX: &str = ".val";
const TEMP_SUFFIX: &str = ".tmp";

/// The directory of value files, open.
pub struct ValueFiles {
    dir: PathBuf,
    /// Numbers the temporary files, so two writes of one value never share one.
    next_temp: AtomicU64,
}

impl ValueFiles {
    /// Opens (creating it, mode 0700) the directory in `data_dir`, and removes the
    /// temporary files of writes a crash cut short.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let dir = data_dir.join(DIR);
        let io = |source| StoreError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_string_lossy().ends_with(TEMP_SUFFIX) {
                std::fs::remove_file(entry.path()).map_err(io)?;
            }
        }
        Ok(Self {
            dir,
            next_temp: AtomicU64::new(0),
        })
    }

    /// The file of the value `name`.
    fn path(&self, name: &str) -> PathBuf {
        let digest = crate::crypto::sha256(name.as_bytes());
        self.dir
            .join(format!("{}{SUFFIX}", crate::util::hex(&digest)))
    }

    /// The value `name` (`None` when there is none, or its file is damaged).
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(name);
        Ok(read_value(&path)?.and_then(|(found, value)| {
            if found == name {
                Some(value)
            } else {
                damaged(&path, "it holds the value of another name");
                None
            }
        }))
    }

    /// Replaces the value `name` with `value`, durably when this returns.
    pub fn put(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        check(self.dir.parent().unwrap_or(&self.dir), name, value)?;
        let path = self.path(name);
        let temp = self.dir.join(format!(
            ".{}.{}{TEMP_SUFFIX}",
            path.file_stem().unwrap_or_default().to_string_lossy(),
            self.next_temp.fetch_add(1, Ordering::Relaxed)
        ));
        let written = write_file(&temp, name, value).and_then(|()| {
            std::fs::rename(&temp, &path)?;
            File::open(&self.dir)?.sync_all()
        });
        written.map_err(|source| {
            let _ = std::fs::remove_file(&temp);
            StoreError::Io {
                path: path.clone(),
                source,
            }
        })
    }

    /// Removes the value `name`, if any, durably when this returns.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    /// Bytes the value files take.
    pub fn bytes(&self) -> Result<u64, StoreError> {
        let io = |source| StoreError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut total = 0u64;
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            match entry.and_then(|e| e.metadata()) {
                Ok(meta) => total = total.saturating_add(meta.len()),
                // Removed meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(total)
    }

    /// The values whose names start with `prefix`, in the order of their names, at
    /// most `limit` of them: `(name, value)`. Damaged files are passed over.
    pub fn named(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let io = |source| StoreError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if !entry.file_name().to_string_lossy().ends_with(SUFFIX) {
                continue;
            }
            let path = entry.path();
            if let Some(name) = read_name(&path)?
                && name.starts_with(prefix)
            {
                names.push((name, path));
            }
        }
        names.sort();
        let mut found = Vec::new();
        for (name, path) in names.into_iter().take(limit) {
            // Checked whole (and against the name its file was listed under) as `get`
            // does; one removed meanwhile is passed over.
            if path == self.path(&name)
                && let Some(value) = self.get(&name)?
            {
                found.push((name, value));
            }
        }
        Ok(found)
    }
}

/// Refuses a name longer than [`MAX_NAME_BYTES`] or a value larger than
/// [`MAX_VALUE_BYTES`], naming `data_dir`: neither would be read back.
pub fn check(data_dir: &Path, name: &str, value: &[u8]) -> Result<(), StoreError> {
    let what = if name.len() > MAX_NAME_BYTES {
        format!(
            "a value named with {} bytes (at most {MAX_NAME_BYTES})",
            name.len()
        )
    } else if value.len() as u64 > MAX_VALUE_BYTES {
        format!(
            "value {name:?} of {} bytes (at most {} MiB)",
            value.len(),
            MAX_VALUE_BYTES >> 20
        )
    } else {
        return Ok(());
    };
    Err(StoreError::ValueTooLarge {
        path: data_dir.to_owned(),
        what,
    })
}

/// Writes a value file at `path` (new, mode 0600) and syncs it.
fn write_file(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(name.as_bytes());
    crc.update(value);
    let mut header = Vec::with_capacity(HEADER_BYTES + name.len());
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(name.len() as u32).to_be_bytes());
    header.extend_from_slice(&(value.len() as u64).to_be_bytes());
    header.extend_from_slice(&crc.finalize().to_be_bytes());
    header.extend_from_slice(name.as_bytes());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(&header)?;
    file.write_all(value)?;
    file.sync_all()
}

/// Logs that the value file at `path` is damaged, and why.
fn damaged(path: &Path, problem: &str) {
    tracing::warn!(
        file = %path.display(),
        problem,
        "a value file of the store is damaged; it reads as absent"
    );
}

/// A file's header: the name's and the value's lengths and the CRC, checked against
/// the file's length. `None` when the file is not a value file of this form.
fn read_header(file: &mut File, path: &Path) -> std::io::Result<Option<(usize, usize, u32)>> {
    let len = file.metadata()?.len();
    let mut header = [0u8; HEADER_BYTES];
    if len < HEADER_BYTES as u64 {
        damaged(path, "it is shorter than its header");
        return Ok(None);
    }
    file.read_exact(&mut header)?;
    let field = |at: usize, n: usize| &header[at..at + n];
    let name_len = u32::from_be_bytes(field(8, 4).try_into().unwrap_or_default()) as u64;
    let value_len = u64::from_be_bytes(field(12, 8).try_into().unwrap_or_default());
    let crc = u32::from_be_bytes(field(20, 4).try_into().unwrap_or_default());
    if &header[..8] != MAGIC {
        damaged(path, "it does not start as a value file does");
        return Ok(None);
    }
    if name_len > MAX_NAME_BYTES as u64 || value_len > MAX_VALUE_BYTES {
        damaged(path, "it claims a name or value larger than the bounds");
        return Ok(None);
    }
    if len != HEADER_BYTES as u64 + name_len + value_len {
        damaged(path, "its length is not the one its header gives");
        return Ok(None);
    }
    Ok(Some((name_len as usize, value_len as usize, crc)))
}

/// The name a value file holds (`None` when it is gone or damaged).
fn read_name(path: &Path) -> Result<Option<String>, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let Some((name_len, _, _)) = read_header(&mut file, path).map_err(io)? else {
        return Ok(None);
    };
    let mut name = vec![0u8; name_len];
    file.read_exact(&mut name).map_err(io)?;
    match String::from_utf8(name) {
        Ok(name) => Ok(Some(name)),
        Err(_) => {
            damaged(path, "its name is not UTF-8");
            Ok(None)
        }
    }
}

/// The name and value a value file holds, checked (`None` when it is absent or
/// damaged).
fn read_value(path: &Path) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let Some((name_len, value_len, crc)) = read_header(&mut file, path).map_err(io)? else {
        return Ok(None);
    };
    let mut name = vec![0u8; name_len];
    file.read_exact(&mut name).map_err(io)?;
    let mut value = vec![0u8; value_len];
    file.read_exact(&mut value).map_err(io)?;
    let mut check = crc32fast::Hasher::new();
    check.update(&name);
    check.update(&value);
    if check.finalize() != crc {
        damaged(path, "its CRC does not match");
        return Ok(None);
    }
    match String::from_utf8(name) {
        Ok(name) => Ok(Some((name, value))),
        Err(_) => {
            damaged(path, "its name is not UTF-8");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_replaced_listed_and_removed() {
        let temp = tempfile::tempdir().unwrap();
        let values = ValueFiles::open(temp.path()).unwrap();
        assert_eq!(values.get("a").unwrap(), None);
        values.put("a", b"one").unwrap();
        values.put("a", b"two").unwrap();
        values.put("#p/x", b"").unwrap();
        values.put("#p/w", b"w").unwrap();
        assert_eq!(values.get("a").unwrap(), Some(b"two".to_vec()));
        assert_eq!(
            values.named("#p/", 10).unwrap(),
            vec![("#p/w".into(), b"w".to_vec()), ("#p/x".into(), Vec::new())]
        );
        assert_eq!(values.named("#p/", 1).unwrap().len(), 1);
        values.remove("a").unwrap();
        values.remove("a").unwrap();
        assert_eq!(values.get("a").unwrap(), None);
        let files: Vec<_> = std::fs::read_dir(temp.path().join(DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(files.iter().all(|f| f.len() == 64 + SUFFIX.len()));
        let header = (HEADER_BYTES * 2) as u64;
        assert_eq!(values.bytes().unwrap(), header + 4 + 1 + 4);
    }

    #[test]
    fn names_never_reach_outside_the_directory() {
        let temp = tempfile::tempdir().unwrap();
        let values = ValueFiles::open(temp.path()).unwrap();
        for name in ["../escape", "/etc/passwd", "a/../../b", ".", "..", "x\0y"] {
            values.put(name, name.as_bytes()).unwrap();
            assert_eq!(values.get(name).unwrap(), Some(name.as_bytes().to_vec()));
        }
        let entries: Vec<_> = std::fs::read_dir(temp.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "only the values directory");
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        assert!(values.put(&long, b"v").is_err());
    }

    #[test]
    fn files_and_directory_are_the_owners_only() {
        let temp = tempfile::tempdir().unwrap();
        let values = ValueFiles::open(temp.path()).unwrap();
        values.put("a", b"secret").unwrap();
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(temp.path().join(DIR)), 0o700);
        assert_eq!(mode(values.path("a")), 0o600);
    }

    #[test]
    fn a_damaged_file_reads_as_absent_and_a_leftover_temporary_file_is_removed() {
        let temp = tempfile::tempdir().unwrap();
        let values = ValueFiles::open(temp.path()).unwrap();
        values.put("a", b"value of a").unwrap();
        values.put("b", b"value of b").unwrap();
        values.put("c", b"value of c").unwrap();
        // A flipped bit in a's value; b cut short; c's file holding b's.
        let a = values.path("a");
        let mut bytes = std::fs::read(&a).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&a, bytes).unwrap();
        let b = std::fs::read(values.path("b")).unwrap();
        std::fs::write(values.path("b"), &b[..b.len() - 1]).unwrap();
        std::fs::write(values.path("c"), &b).unwrap();
        let leftover = temp.path().join(DIR).join(".x.0.tmp");
        std::fs::write(&leftover, b"half").unwrap();
        assert_eq!(values.get("a").unwrap(), None);
        assert_eq!(values.get("b").unwrap(), None);
        assert_eq!(values.get("c").unwrap(), None);
        assert_eq!(values.named("", 10).unwrap(), Vec::new());
        let values = ValueFiles::open(temp.path()).unwrap();
        assert!(!leftover.exists());
        values.put("a", b"again").unwrap();
        assert_eq!(values.get("a").unwrap(), Some(b"again".to_vec()));
    }
}
