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

    /// The narrower of `self` and `other`: only recipients both allow, and the smaller
    /// `max_hops`. `None` when both name recipients and share none.
    pub fn narrowed(&self, other: &Distribution) -> Option<Distribution> {
        let recipients = match (self.recipients.is_empty(), other.recipients.is_empty()) {
            (true, _) => other.recipients.clone(),
            (false, true) => self.recipients.clone(),
            (false, false) => {
                let both: Vec<NodeId> = self
                    .recipients
                    .iter()
                    .filter(|r| other.recipients.contains(r))
                    .cloned()
                    .collect();
                if both.is_empty() {
                    return None;
                }
                both
            }
        };
        let max_hops = match (self.max_hops, other.max_hops) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        Some(Distribution {
            max_hops,
            recipients,
        })
    }

    /// Why a bundle under `self` may go further than one under `other` (a recipient
    /// `other` does not name, or more hops), if it may.
    pub fn reaches_beyond(&self, other: &Distribution) -> Option<String> {
        if !other.recipients.is_empty()
            && (self.recipients.is_empty()
                || self
                    .recipients
                    .iter()
                    .any(|r| !other.recipients.contains(r)))
        {
            return Some("it may go to nodes outside the recipient list".into());
        }
        match other.max_hops {
            Some(max) if self.max_hops.is_none_or(|hops| hops > max) => {
                Some(format!("it may travel further than {max} hop(s)"))
            }
            _ => None,
        }
    }
}
