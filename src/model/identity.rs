//! Identities of nodes and clients, and the roles a configuration gives them.

use std::fmt;
use std::str::FromStr;

/// The id of a node or client: a lower-case DNS name such as `redmond.hq`,
/// carried as the first DNS subject-alternative name of its certificate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

/// Why a string is not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNodeId {
    /// The string is empty.
    #[error("id is empty")]
    Empty,
    /// The string is longer than a DNS name may be (253 bytes).
    #[error("id is longer than 253 characters")]
    TooLong,
    /// A label (the part between dots) is empty or longer than 63 characters.
    #[error("label {0:?} must be 1 to 63 characters")]
    BadLabelLength(String),
    /// A character other than `a-z`, `0-9`, `-` and `.` appears.
    #[error("character {0:?} is not allowed (use lower-case a-z, 0-9, '-' and '.')")]
    BadCharacter(char),
    /// A label starts or ends with a hyphen.
    #[error("label {0:?} must not start or end with '-'")]
    HyphenAtEdge(String),
}

impl NodeId {
    /// Parses and validates an id.
    pub fn new(id: &str) -> Result<Self, InvalidNodeId> {
        if id.is_empty() {
            return Err(InvalidNodeId::Empty);
        }
        if id.len() > 253 {
            return Err(InvalidNodeId::TooLong);
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
        {
            return Err(InvalidNodeId::BadCharacter(c));
        }
        for label in id.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(InvalidNodeId::BadLabelLength(label.to_owned()));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(InvalidNodeId::HyphenAtEdge(label.to_owned()));
            }
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = InvalidNodeId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a configured partner may do on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A federation node that exchanges bundles both ways.
    Peer,
    /// May query and subscribe; never writes. Data it sends is never accepted.
    ReadOnly,
    /// A client that may also publish.
    Analyst,
    /// A client that may publish and administer the node.
    Admin,
}

impl Role {
    /// The configuration spelling of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::ReadOnly => "read_only",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an authenticated caller is another node or a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartnerKind {
    /// A `[[peer]]`: a federation node.
    Node,
    /// A `[[client]]`: an analyst, researcher, dashboard or connector.
    Client,
    /// This node's own certificate, used by the operator's CLI on the node's host.
    Local,
}

/// A configured partner, as identified from its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partner {
    /// Its id.
    pub id: NodeId,
    /// Node or client.
    pub kind: PartnerKind,
    /// What it may do.
    pub role: Role,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_style_ids() {
        for id in [
            "redmond.hq",
            "berlin.office",
            "researcher.uni-x",
            "hq",
            "a1.b2-c",
        ] {
            assert_eq!(NodeId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn rejects_malformed_ids() {
        assert_eq!(NodeId::new(""), Err(InvalidNodeId::Empty));
        assert_eq!(
            NodeId::new("Redmond.hq"),
            Err(InvalidNodeId::BadCharacter('R'))
        );
        assert_eq!(
            NodeId::new("a..b"),
            Err(InvalidNodeId::BadLabelLength(String::new()))
        );
        assert_eq!(
            NodeId::new("-a.b"),
            Err(InvalidNodeId::HyphenAtEdge("-a".into()))
        );
        assert_eq!(NodeId::new("a b"), Err(InvalidNodeId::BadCharacter(' ')));
        assert_eq!(
            NodeId::new("hq."),
            Err(InvalidNodeId::BadLabelLength(String::new()))
        );
        assert!(matches!(
            NodeId::new(&"a".repeat(64)),
            Err(InvalidNodeId::BadLabelLength(_))
        ));
        assert_eq!(
            NodeId::new(&"a.".repeat(127)).unwrap_err(),
            InvalidNodeId::TooLong
        );
    }
}
