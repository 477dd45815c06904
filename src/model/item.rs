//! Items: indicators and revocations, their TLP 2.0 markings, ids and normalised values.

use std::fmt;
use std::str::FromStr;

/// Why an item or one of its fields is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// An id is not `indicator--<uuid>`.
    #[error("invalid item id {0:?}: expected indicator--<uuid>")]
    BadId(String),
    /// An unknown TLP marking.
    #[error("unknown TLP marking {0:?} (expected CLEAR, GREEN, AMBER, AMBER+STRICT or RED)")]
    BadTlp(String),
    /// An unknown indicator type.
    #[error("unknown indicator type {0:?}")]
    BadType(String),
    /// A value that does not parse as its type.
    #[error(transparent)]
    Value(#[from] InvalidValue),
    /// Any other field problem (too long, out of range, ...).
    #[error("{field}: {problem}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// A value that is not a valid indicator of its type, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {indicator_type} value {value:?}: {reason}")]
pub struct InvalidValue {
    /// The type it was checked against.
    pub indicator_type: IndicatorType,
    /// The value as given (truncated to a sensible length).
    pub value: String,
    /// Why it is invalid.
    pub reason: String,
}

/// TLP 2.0 marking, ordered from least to most restricted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tlp {
    /// TLP:CLEAR
    Clear,
    /// TLP:GREEN
    Green,
    /// TLP:AMBER
    Amber,
    /// TLP:AMBER+STRICT
    AmberStrict,
    /// TLP:RED
    Red,
}

/// Indicator types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IndicatorType {
    /// IPv4 address.
    Ipv4,
    /// IPv6 address.
    Ipv6,
    /// IPv4 or IPv6 network in CIDR notation.
    Cidr,
    /// Domain name.
    Domain,
    /// URL.
    Url,
    /// E-mail address.
    Email,
    /// MD5 file hash.
    Md5,
    /// SHA-1 file hash.
    Sha1,
    /// SHA-256 file hash.
    Sha256,
    /// Any other STIX 2.1 pattern, kept as written.
    StixPattern,
}

/// A STIX-compatible item id, `indicator--<uuid>` in lower case.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemId(String);

/// An indicator of compromise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indicator {
    /// Its type.
    pub indicator_type: IndicatorType,
    /// The normalised value (or the STIX pattern for [`IndicatorType::StixPattern`]).
    pub value: String,
    /// Free text.
    pub description: String,
    /// 0 to 100.
    pub confidence: u8,
    /// Kill-chain phases, e.g. `mitre-attack:command-and-control`.
    pub kill_chain_phases: Vec<String>,
    /// Start of validity, milliseconds since the Unix epoch.
    pub valid_from_ms: i64,
    /// End of validity; past it the indicator is expired.
    pub valid_until_ms: Option<i64>,
}

/// The withdrawal of an indicator by its origin. It carries the type of the
/// indicator it revokes (its item's TLP and tags are those of the indicator), so
/// policy judges it like the indicator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Type of the revoked indicator.
    pub indicator_type: IndicatorType,
    /// Why it is revoked.
    pub reason: String,
}

/// What an item is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemKind {
    /// An indicator.
    Indicator(Indicator),
    /// A revocation of the indicator with the same id.
    Revocation(Revocation),
}

/// The unit of sharing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Stable id; a revocation has the id of the indicator it revokes.
    pub id: ItemId,
    /// Version: milliseconds since the Unix epoch, strictly increasing per id.
    pub modified_ms: i64,
    /// Its own marking.
    pub tlp: Tlp,
    /// Tags used by policies, e.g. `pii`, `source:honeypot`.
    pub tags: Vec<String>,
    /// Indicator or revocation.
    pub kind: ItemKind,
}
