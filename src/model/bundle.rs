//! Bundle-level vocabulary: bundle ids and the signed distribution.

use std::fmt;

use super::identity::NodeId;
use super::item::ModelError;

/// Largest recipient list a bundle may carry.
pub const MAX_RECIPIENTS: usize = 1024;

/// A bundle id, `bundle--<uuid>` in lower case.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BundleId(String);

impl BundleId {
    /// A fresh id: a time-ordered UUID (version 7).
    pub fn new_random() -> Self {
        Self(format!("bundle--{}", uuid::Uuid::now_v7()))
    }

    /// The UUID as 16 bytes (the store's compact key).
    pub fn uuid_bytes(&self) -> [u8; 16] {
        // A BundleId is only built from a parsed UUID, so this cannot fail.
        uuid::Uuid::parse_str(&self.0[8..])
            .map(|u| *u.as_bytes())
            .unwrap_or_default()
    }

    /// The id of a UUID given as 16 bytes.
    pub fn from_uuid_bytes(bytes: [u8; 16]) -> Self {
        Self(format!("bundle--{}", uuid::Uuid::from_bytes(bytes)))
    }

    /// Parses `bundle--<uuid>`.
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let bad = || ModelError::Field {
            field: "bundle_id",
            problem: format!(
                "{:?} is not bundle--<uuid>",
                s.chars().take(80).collect::<String>()
            ),
        };
        let rest = s.strip_prefix("bundle--").ok_or_else(bad)?;
        if rest.len() != 36 {
            return Err(bad());
        }
        let uuid = uuid::Uuid::try_parse(rest).map_err(|_| bad())?;
        Ok(Self(format!("bundle--{uuid}")))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BundleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who may ever hold a bundle (signed in its header).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Distribution {
    /// Greatest number of node-to-node transfers from the origin; `None` = unlimited.
    pub max_hops: Option<u32>,
    /// When non-empty, only these nodes may ever hold the bundle.
    pub recipients: Vec<NodeId>,
}

impl Distribution {
    /// Whether `node` may hold the bundle under the recipient list.
    pub fn admits(&self, node: &NodeId) -> bool {
        self.recipients.is_empty() || self.recipients.contains(node)
    }
}
