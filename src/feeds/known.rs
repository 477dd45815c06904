//! The names of every feed this node has been configured with, kept in `feeds.known`
//! in the data directory.
//!
//! An item a feed brought in is signed as this node's own and carries `source:<name>`.
//! Policy passes such items to other nodes only as third-party items (rule 3) unless
//! the feed is configured `share_with_peers`. Once a feed leaves the configuration its
//! items are still in the store, and they still came from outside: the node keeps the
//! feed's name here so that they stay third-party. Without it, taking a feed out of the
//! configuration would release its AMBER and RED items to every partner node whose
//! policy allows the marking.
//!
//! The file lives beside the bundle log rather than in the metadata, so that a
//! recovery (`entente store recover`, which sets the metadata aside) keeps it.

use std::io::Write;
use std::path::{Path, PathBuf};

/// File name in the data directory.
pub const FILE: &str = "feeds.known";
/// Most names kept; a configuration that would go past it is refused.
pub const MAX_NAMES: usize = 4_096;
/// Largest file read: every name is at most 48 bytes and a newline.
const MAX_BYTES: u64 = (MAX_NAMES as u64) * 49;

/// The names recorded in `data_dir`, sorted; none when the file does not exist.
pub fn read(data_dir: &Path) -> Result<Vec<String>, String> {
    let path = path(data_dir);
    let bytes = match crate::util::read_small_file(&path, MAX_BYTES) {
        Ok(bytes) => bytes,
        Err(crate::util::SmallFileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let damaged = |why: &str| {
        format!(
            "{}: {why}. The file lists the feeds this node was ever configured with, so that their items stay third-party; restore it from a backup, or write the missing names one per line",
            path.display()
        )
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| damaged("not UTF-8"))?;
    let mut names = Vec::new();
    for line in text.lines() {
        if !crate::config::is_feed_name(line) {
            return Err(damaged(&format!("{line:?} is not a feed name")));
        }
        names.push(line.to_owned());
    }
    if names.len() > MAX_NAMES {
        return Err(damaged(&format!("more than {MAX_NAMES} names")));
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Adds the names of the feeds `configured` to those recorded in `data_dir` (written,
/// synced and renamed into place before this returns, when any is new) and returns
/// them all, sorted.
pub fn remember<'a>(
    data_dir: &Path,
    configured: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<String>, String> {
    let mut names = read(data_dir)?;
    let before = names.len();
    for name in configured {
        if let Err(at) = names.binary_search_by(|known| known.as_str().cmp(name)) {
            names.insert(at, name.to_owned());
        }
    }
    if names.len() == before {
        return Ok(names);
    }
    if names.len() > MAX_NAMES {
        return Err(format!(
            "{} would list more than {MAX_NAMES} feeds",
            path(data_dir).display()
        ));
    }
    write(data_dir, &names).map_err(|e| {
        format!(
            "recording the configured feeds in {}: {e}",
            path(data_dir).display()
        )
    })?;
    Ok(names)
}

/// The name the store keeps its copy of the names under, among the values of the
/// node's own (no feed can have it).
const STORED_AS: &str = "#known-feeds";

/// [`remember`], with the store's copy of the names as well: the names in either are
/// kept in both, so that neither the file nor the store losing its copy on its own
/// (a file deleted, metadata set aside by `store recover`) makes a feed's items the
/// node's own.
pub fn remember_in_both<'a>(
    data_dir: &Path,
    store: &dyn crate::store::LocalState,
    configured: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<String>, String> {
    let stored = store
        .feed_checkpoint(STORED_AS)
        .map_err(|e| {
            format!("reading the feeds this node was configured with from the store: {e}")
        })?
        .unwrap_or_default();
    let stored_text = String::from_utf8_lossy(&stored).into_owned();
    let stored_names: Vec<String> = stored_text
        .lines()
        .filter(|name| crate::config::is_feed_name(name))
        .map(str::to_owned)
        .collect();
    let configured: Vec<String> = configured.into_iter().map(str::to_owned).collect();
    let names = remember(
        data_dir,
        configured.iter().chain(&stored_names).map(String::as_str),
    )?;
    if names != stored_names {
        let mut text = String::new();
        for name in &names {
            text.push_str(name);
            text.push('\n');
        }
        store
            .set_feed_checkpoint(STORED_AS, text.as_bytes())
            .map_err(|e| format!("recording the configured feeds in the store: {e}"))?;
    }
    Ok(names)
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

fn write(data_dir: &Path, names: &[String]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir)?;
    let path = path(data_dir);
    let temp = data_dir.join(format!("{FILE}.new"));
    let mut text = String::with_capacity(names.len() * 16);
    for name in names {
        text.push_str(name);
        text.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, &path)?;
    crate::store::log::sync_dir(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_across_configurations_and_never_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_empty());
        assert_eq!(
            remember(dir.path(), ["vendor", "abuse"]).unwrap(),
            ["abuse", "vendor"]
        );
        // The feed taken out of the configuration stays known.
        assert_eq!(
            remember(dir.path(), ["misp"]).unwrap(),
            ["abuse", "misp", "vendor"]
        );
        assert_eq!(read(dir.path()).unwrap(), ["abuse", "misp", "vendor"]);
        let mode = std::fs::metadata(dir.path().join(FILE)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_file_is_refused_not_taken_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "vendor\n../etc\n").unwrap();
        let e = read(dir.path()).unwrap_err();
        assert!(e.contains("not a feed name"), "{e}");
        assert!(remember(dir.path(), ["vendor"]).is_err());
    }
}
