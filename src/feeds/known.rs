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

/// One feed as recorded: its name, and whether it was configured `share_with_peers`
/// when last seen in the configuration (a line `NAME` or `NAME shared`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KnownFeed {
    /// The feed's name.
    pub name: String,
    /// `share_with_peers` as last configured.
    pub shared: bool,
}

impl KnownFeed {
    /// A feed of the configuration in force.
    pub fn configured(feed: &crate::config::FeedConfig) -> Self {
        Self {
            name: feed.name.clone(),
            shared: feed.share_with_peers,
        }
    }

    fn parse(line: &str) -> Option<Self> {
        let mut words = line.split(' ');
        let name = words.next().filter(|n| crate::config::is_feed_name(n))?;
        let shared = match words.next() {
            None => false,
            Some("shared") => true,
            Some(_) => return None,
        };
        words.next().is_none().then(|| Self {
            name: name.to_owned(),
            shared,
        })
    }

    fn line(&self) -> String {
        if self.shared {
            format!("{} shared", self.name)
        } else {
            self.name.clone()
        }
    }
}

/// The feeds recorded in `data_dir`, sorted by name; none when the file does not exist.
pub fn read(data_dir: &Path) -> Result<Vec<KnownFeed>, String> {
    read_telling(data_dir).map_err(|e| match e {
        ReadError::Unreadable(why) | ReadError::Damaged(why) => why,
    })
}

/// Why the record could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The file could not be read (its permissions, an I/O error): it may well be sound.
    Unreadable(String),
    /// The file was read and is not a record of feeds: `serve` refuses to start on it.
    Damaged(String),
}

/// [`read`], telling a file that could not be read from one that is damaged.
pub fn read_telling(data_dir: &Path) -> Result<Vec<KnownFeed>, ReadError> {
    let path = path(data_dir);
    let bytes = match crate::util::read_small_file(&path, MAX_BYTES) {
        Ok(bytes) => bytes,
        Err(crate::util::SmallFileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(crate::util::SmallFileError::Io(e)) => {
            return Err(ReadError::Unreadable(format!("{}: {e}", path.display())));
        }
        Err(e) => return Err(ReadError::Damaged(format!("{}: {e}", path.display()))),
    };
    let damaged = |why: &str| {
        format!(
            "{}: {why}. The file lists the feeds this node was ever configured with, so that their items stay third-party; restore it from a backup, or write the missing names one per line (`NAME`, or `NAME shared` for a feed configured share_with_peers)",
            path.display()
        )
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| ReadError::Damaged(damaged("not UTF-8")))?;
    let mut feeds = Vec::new();
    for line in text.lines() {
        let Some(feed) = KnownFeed::parse(line) else {
            return Err(ReadError::Damaged(damaged(&format!(
                "{line:?} is not a feed name"
            ))));
        };
        feeds.push(feed);
    }
    if feeds.len() > MAX_NAMES {
        return Err(ReadError::Damaged(damaged(&format!(
            "more than {MAX_NAMES} names"
        ))));
    }
    Ok(merged(feeds, []))
}

/// `earlier` with `now` put over it, one entry per name, sorted by name. Of two
/// earlier entries of one name, the one not shared wins (fail closed).
fn merged(
    earlier: impl IntoIterator<Item = KnownFeed>,
    now: impl IntoIterator<Item = KnownFeed>,
) -> Vec<KnownFeed> {
    let mut by_name: std::collections::BTreeMap<String, bool> = std::collections::BTreeMap::new();
    for feed in earlier {
        let shared = by_name
            .get(&feed.name)
            .map_or(feed.shared, |s| *s && feed.shared);
        by_name.insert(feed.name, shared);
    }
    for feed in now {
        by_name.insert(feed.name, feed.shared);
    }
    by_name
        .into_iter()
        .map(|(name, shared)| KnownFeed { name, shared })
        .collect()
}

/// Records the feeds `configured` (with their sharing setting) over those recorded in
/// `data_dir`, written, synced and renamed into place before this returns when
/// anything changed, and returns them all, sorted by name.
pub fn remember(
    data_dir: &Path,
    configured: impl IntoIterator<Item = KnownFeed>,
) -> Result<Vec<KnownFeed>, String> {
    let recorded = read(data_dir)?;
    let feeds = merged(recorded.clone(), configured);
    if feeds == recorded {
        return Ok(feeds);
    }
    if feeds.len() > MAX_NAMES {
        return Err(format!(
            "{} would list more than {MAX_NAMES} feeds",
            path(data_dir).display()
        ));
    }
    write(data_dir, &feeds).map_err(|e| {
        format!(
            "recording the configured feeds in {}: {e}",
            path(data_dir).display()
        )
    })?;
    Ok(feeds)
}

/// The name the store keeps its copy of the feeds under, among the values of the
/// node's own (no feed can have it).
const STORED_AS: &str = "#known-feeds";

/// [`remember`], with the store's copy as well: what either holds is kept in both, so
/// that neither the file nor the store losing its copy on its own (a file deleted,
/// metadata set aside by `store recover`) makes a feed's items the node's own.
pub fn remember_in_both(
    data_dir: &Path,
    store: &dyn crate::store::LocalState,
    configured: impl IntoIterator<Item = KnownFeed>,
) -> Result<Vec<KnownFeed>, String> {
    let stored = store
        .feed_checkpoint(STORED_AS)
        .map_err(|e| {
            format!("reading the feeds this node was configured with from the store: {e}")
        })?
        .unwrap_or_default();
    let stored: Vec<KnownFeed> = String::from_utf8_lossy(&stored)
        .lines()
        .filter_map(KnownFeed::parse)
        .collect();
    let recorded = read(data_dir)?;
    let feeds = remember(
        data_dir,
        merged(recorded.into_iter().chain(stored.clone()), configured),
    )?;
    if feeds != stored {
        store
            .set_feed_checkpoint(STORED_AS, text(&feeds).as_bytes())
            .map_err(|e| format!("recording the configured feeds in the store: {e}"))?;
    }
    Ok(feeds)
}

fn text(feeds: &[KnownFeed]) -> String {
    let mut text = String::with_capacity(feeds.len() * 16);
    for feed in feeds {
        text.push_str(&feed.line());
        text.push('\n');
    }
    text
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

fn write(data_dir: &Path, feeds: &[KnownFeed]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir)?;
    let path = path(data_dir);
    let temp = data_dir.join(format!("{FILE}.new"));
    let text = text(feeds);
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

    fn feed(name: &str, shared: bool) -> KnownFeed {
        KnownFeed {
            name: name.into(),
            shared,
        }
    }

    fn names(feeds: &[KnownFeed]) -> Vec<String> {
        feeds.iter().map(KnownFeed::line).collect()
    }

    #[test]
    fn feeds_are_kept_across_configurations_with_their_last_setting() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_empty());
        let known = remember(dir.path(), [feed("vendor", false), feed("abuse", true)]).unwrap();
        assert_eq!(names(&known), ["abuse shared", "vendor"]);
        // Taken out of the configuration, each stays known as it was last configured;
        // one configured again takes its setting now.
        let known = remember(dir.path(), [feed("misp", false), feed("vendor", true)]).unwrap();
        assert_eq!(names(&known), ["abuse shared", "misp", "vendor shared"]);
        assert_eq!(read(dir.path()).unwrap(), known);
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
        assert!(remember(dir.path(), [feed("vendor", false)]).is_err());
        std::fs::write(dir.path().join(FILE), "vendor shared twice\n").unwrap();
        assert!(read(dir.path()).is_err());
    }
}
