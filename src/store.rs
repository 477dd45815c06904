//! Durable state behind the [`Store`] trait, with sled as the engine. Tree names
//! carry a format version (`meta.v1`, later `bundles.v1`, `feed.v1`, ...). No proto
//! and no network here.
//!
//! At this stage the store records which node owns the data directory, so a data
//! directory is never opened by a node with another id.

use std::path::{Path, PathBuf};

use crate::model::NodeId;

/// Why the store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption, or the directory is locked by another process).
    #[error("store at {path}: {source}")]
    Engine {
        /// The data directory.
        path: PathBuf,
        /// The sled error.
        source: sled::Error,
    },
    /// The data directory belongs to another node.
    #[error("store at {path} belongs to node {found}, not {expected}")]
    WrongOwner {
        /// The data directory.
        path: PathBuf,
        /// The configured node id.
        expected: NodeId,
        /// The id recorded in the store.
        found: String,
    },
}

/// The node's durable state.
pub trait Store: Send + Sync {
    /// The id of the node that owns the store.
    fn owner(&self) -> &NodeId;
    /// Forces everything written so far to disk.
    fn flush(&self) -> Result<(), StoreError>;
}

const META_TREE: &str = "meta.v1";
const OWNER_KEY: &[u8] = b"owner";

/// The sled implementation of [`Store`].
pub struct SledStore {
    path: PathBuf,
    owner: NodeId,
    db: sled::Db,
}

impl SledStore {
    /// Opens (or creates) the store in `dir` for node `owner`.
    pub fn open(dir: &Path, owner: &NodeId) -> Result<Self, StoreError> {
        let engine = |source| StoreError::Engine {
            path: dir.to_owned(),
            source,
        };
        let db = sled::Config::new().path(dir).open().map_err(engine)?;
        let meta = db.open_tree(META_TREE).map_err(engine)?;
        match meta.get(OWNER_KEY).map_err(engine)? {
            Some(found) if found.as_ref() != owner.as_str().as_bytes() => {
                return Err(StoreError::WrongOwner {
                    path: dir.to_owned(),
                    expected: owner.clone(),
                    found: String::from_utf8_lossy(&found).into_owned(),
                });
            }
            Some(_) => {}
            None => {
                meta.insert(OWNER_KEY, owner.as_str().as_bytes())
                    .map_err(engine)?;
                db.flush().map_err(engine)?;
            }
        }
        Ok(Self {
            path: dir.to_owned(),
            owner: owner.clone(),
            db,
        })
    }
}

impl Store for SledStore {
    fn owner(&self) -> &NodeId {
        &self.owner
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|source| StoreError::Engine {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_data_dir_of_another_node() {
        let dir = tempfile::tempdir().unwrap();
        let hq = NodeId::new("redmond.hq").unwrap();
        SledStore::open(dir.path(), &hq).unwrap();
        let other = NodeId::new("berlin.office").unwrap();
        let err = SledStore::open(dir.path(), &other).err().unwrap();
        assert!(matches!(err, StoreError::WrongOwner { .. }), "{err}");
        // The rightful owner still opens it.
        SledStore::open(dir.path(), &hq).unwrap();
    }
}
