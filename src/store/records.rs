//! On-disk records and key layout of the sled store. Everything lives in one sled
//! tree (`entente.v2`) so that one accepted bundle, with all its index entries, is
//! one atomic `Batch`; keyspaces are separated by a one-byte prefix. Ids are stored
//! as their 16 UUID bytes; new ids are time-ordered (UUID v7), so new entries land at
//! the end of their keyspace.
//!
//! The latest version of each item is stored once, under its value: an exact-value
//! lookup is one range read that yields the items themselves, and every item costs
//! two writes (its record and a lean id entry), with no read-modify-write of a shared
//! index entry.
//!
//! | prefix | key | value |
//! | --- | --- | --- |
//! | `M` | name | meta: owner id, feed head, ledger head |
//! | `B` | bundle UUID | [`BundleRecord`] |
//! | `V` | type code, value, `0xFF`, item UUID | [`ItemRecord`] (the latest version held) |
//! | `I` | item UUID | type code and value: where the item's `V` record is (id index) |
//! | `F` | sequence (u64 big-endian) | bundle UUID (change feed) |
//! | `C` | SHA-256 of the certificate | DER certificate (cache) |
//! | `K` | peer id | replication cursor in that peer's feed (u64 big-endian) |
//! | `P` | peer id | fingerprint of the policy that peer was last served a pull under |
//! | `L` | sequence (u64 big-endian) | [`LedgerRecordBytes`] (disclosure ledger) |
//!
//! A value is UTF-8, which never holds the byte `0xFF`, so `V`, type, value, `0xFF` is
//! a prefix of exactly the items with that value. Revocations are not indicators;
//! they are kept under type code 0 with an empty value, apart from every type.

use crate::model::{IndicatorType, Item, ItemKind};

/// Name of the sled tree; the suffix is the format version.
pub const TREE: &str = "entente.v2";

pub const BUNDLE: u8 = b'B';
pub const ITEM: u8 = b'I';
pub const VALUE: u8 = b'V';
pub const FEED: u8 = b'F';
pub const CERT: u8 = b'C';
pub const CURSOR: u8 = b'K';
pub const SERVED: u8 = b'P';
pub const LEDGER: u8 = b'L';

pub const META_OWNER: &[u8] = b"Mowner";
pub const META_FEED_HEAD: &[u8] = b"Mfeed_head";
/// The last ledger record: its sequence number (8 bytes big-endian), then its hash
/// (32 bytes).
pub const META_LEDGER_HEAD: &[u8] = b"Mledger_head";

/// A bundle as held: the exact signed header and signature, and which items are known.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BundleRecord {
    #[prost(bytes = "vec", tag = "1")]
    pub header_bytes: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
    /// Items of this bundle this node knows (disclosed to it), by index.
    #[prost(message, repeated, tag = "3")]
    pub known: Vec<KnownItem>,
    /// Latest change-feed position of this bundle.
    #[prost(uint64, tag = "4")]
    pub feed_seq: u64,
    /// When this node first accepted the bundle.
    #[prost(int64, tag = "5")]
    pub accepted_ms: i64,
}

/// One known item of a bundle.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KnownItem {
    #[prost(uint32, tag = "1")]
    pub index: u32,
    /// The item's UUID bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub item_uuid: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub modified_ms: i64,
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

/// Ends the value in a `V` key; UTF-8 never contains it.
pub const VALUE_END: u8 = 0xFF;

/// Type code of items that are not indicators (revocations).
pub const NOT_INDEXED: u8 = 0;

/// `V` + type + value + `0xFF`: the prefix of every item holding that exact value.
pub fn value_prefix(ty: IndicatorType, value: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + value.len());
    k.push(VALUE);
    k.push(type_code(ty));
    k.extend_from_slice(value.as_bytes());
    k.push(VALUE_END);
    k
}

/// The location of an item's record as kept in its `I` entry: type code and value.
pub fn location_of(item: &Item) -> Vec<u8> {
    match &item.kind {
        ItemKind::Indicator(i) => {
            let mut l = Vec::with_capacity(1 + i.value.len());
            l.push(type_code(i.indicator_type));
            l.extend_from_slice(i.value.as_bytes());
            l
        }
        ItemKind::Revocation(_) => vec![NOT_INDEXED],
    }
}

/// The `V` key of the item `uuid` at `location` (from [`location_of`]).
pub fn item_key(location: &[u8], uuid: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + location.len() + 16);
    k.push(VALUE);
    k.extend_from_slice(location);
    k.push(VALUE_END);
    k.extend_from_slice(uuid);
    k
}

/// The item UUID at the end of a `V` key.
pub fn uuid_of_item_key(key: &[u8]) -> Option<[u8; 16]> {
    key.len()
        .checked_sub(16)
        .filter(|&at| at >= 3 && key[0] == VALUE && key[at - 1] == VALUE_END)
        .and_then(|at| key[at..].try_into().ok())
}

pub fn feed_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = FEED;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
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
