//! On-disk records and key layout of the store.
//!
//! Bundles and items live in the bundle log (`bundles.v3.log`, see `log.rs`): each
//! accept is one frame with the bundle head (the first time), one [`ItemRecord`] per
//! item stored and the bundle's place in the change feed. The indexes over them (by
//! item id, by value, by bundle, the feed) are rebuilt in memory when the store opens.
//!
//! Everything else lives in one sled tree (`entente.v3`); keyspaces are separated by
//! a one-byte prefix:
//!
//! | prefix | key | value |
//! | --- | --- | --- |
//! | `M` | name | meta: owner id, ledger head |
//! | `C` | SHA-256 of the certificate | DER certificate (cache) |
//! | `K` | peer id | replication cursor in that peer's feed (u64 big-endian) |
//! | `P` | peer id | fingerprint of the policy that peer was last served a pull under |
//! | `L` | sequence (u64 big-endian) | [`LedgerRecordBytes`] (disclosure ledger) |

use crate::model::{IndicatorType, Item, ItemKind};

/// Name of the sled tree; the suffix is the format version.
pub const TREE: &str = "entente.v3";
/// Trees of older formats, which this version refuses to open.
pub const OLD_TREES: &[&str] = &["entente.v2", "entente.v1", "meta.v1"];
/// File name of the bundle log in the data directory.
pub const LOG_FILE: &str = "bundles.v3.log";

pub const CERT: u8 = b'C';
pub const CURSOR: u8 = b'K';
pub const SERVED: u8 = b'P';
pub const LEDGER: u8 = b'L';

pub const META_OWNER: &[u8] = b"Mowner";
/// The last ledger record: its sequence number (8 bytes big-endian), then its hash
/// (32 bytes).
pub const META_LEDGER_HEAD: &[u8] = b"Mledger_head";

/// A bundle's signed parts, logged once when the bundle is first accepted.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BundleHead {
    #[prost(bytes = "vec", tag = "1")]
    pub header_bytes: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
}

/// The latest version of an item this node holds, with its provenance.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ItemRecord {
    /// The bundle's UUID bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub bundle_uuid: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub index: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub salt: Vec<u8>,
    /// Exact bytes as hashed into the bundle.
    #[prost(bytes = "vec", tag = "4")]
    pub item_bytes: Vec<u8>,
    #[prost(int64, tag = "5")]
    pub modified_ms: i64,
    #[prost(string, tag = "6")]
    pub origin: String,
    #[prost(string, tag = "7")]
    pub received_from: String,
    #[prost(uint32, tag = "8")]
    pub hops: u32,
    #[prost(int64, tag = "9")]
    pub accepted_ms: i64,
}

/// One disclosure-ledger record as stored. The stored bytes are what the chain
/// hashes, so the record carries its own sequence number and the link to the one
/// before it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LedgerRecordBytes {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(int64, tag = "2")]
    pub time_ms: i64,
    /// The receiving partner's node id.
    #[prost(string, tag = "3")]
    pub partner: String,
    /// The outbound path ("query", "get", ...).
    #[prost(string, tag = "4")]
    pub path: String,
    #[prost(message, repeated, tag = "5")]
    pub deliveries: Vec<LedgerDelivery>,
    /// SHA-256 of the policy version in force (32 bytes).
    #[prost(bytes = "vec", tag = "6")]
    pub policy_hash: Vec<u8>,
    /// The hash of the previous record's stored bytes (32 zero bytes for the first).
    #[prost(bytes = "vec", tag = "7")]
    pub prev_hash: Vec<u8>,
}

/// The items of one bundle disclosed by one delivery.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LedgerDelivery {
    /// The bundle's UUID bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub bundle_uuid: Vec<u8>,
    /// Item indices (packed).
    #[prost(uint32, repeated, packed = "true", tag = "2")]
    pub indices: Vec<u32>,
}

pub fn type_code(ty: IndicatorType) -> u8 {
    match ty {
        IndicatorType::Ipv4 => 1,
        IndicatorType::Ipv6 => 2,
        IndicatorType::Cidr => 3,
        IndicatorType::Domain => 4,
        IndicatorType::Url => 5,
        IndicatorType::Email => 6,
        IndicatorType::Md5 => 7,
        IndicatorType::Sha1 => 8,
        IndicatorType::Sha256 => 9,
        IndicatorType::StixPattern => 10,
    }
}

pub fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

/// Type code of items that are not indicators (revocations): not in the value index.
pub const NOT_INDEXED: u8 = 0;

/// The type code and value an item is found under, if it is an indicator.
pub fn value_of(item: &Item) -> Option<(u8, &str)> {
    match &item.kind {
        ItemKind::Indicator(i) => Some((type_code(i.indicator_type), i.value.as_str())),
        ItemKind::Revocation(_) => None,
    }
}

/// `L` + sequence: the key of one ledger record.
pub fn ledger_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LEDGER;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number of a ledger key (`None` if the key is not `L` + 8 bytes).
pub fn ledger_seq(key: &[u8]) -> Option<u64> {
    match key {
        [LEDGER, rest @ ..] => rest.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

/// 16 UUID bytes from a stored field.
pub fn uuid16(bytes: &[u8]) -> Option<[u8; 16]> {
    bytes.try_into().ok()
}
