//! On-disk records and key layout of the store.
//!
//! Bundles and items live in the bundle log (`bundles.v4.log`, see `log.rs`): each
//! accept is one frame with the bundle head (the first time), one [`ItemRecord`] per
//! item stored and the bundle's place in the change feed. The indexes over them (by
//! item id, by value, by bundle, the feed) are rebuilt in memory when the store opens.
//!
//! Everything else lives in one sled tree (`entente.v3`); keyspaces are separated by
//! a one-byte prefix:
//!
//! | prefix | key | value |
//! | --- | --- | --- |
//! | `M` | name | meta: owner id, store format, store id, ledger head, log watermark and generation, a compaction being swapped in, feed lease |
//! | `C` | SHA-256 of the certificate | DER certificate (cache) |
//! | `K` | peer id | replication cursor in that peer's feed: the position token it issued, as received (at most 64 bytes; an 8-byte value from before federation protocol 3 is a plain position, which a peer of protocol 3 does not open and serves its feed from the start) |
//! | `P` | peer id | fingerprint of the policy that peer was last served a pull under |
//! | `L` | sequence (u64 big-endian) | [`LedgerRecordBytes`]: the disclosure ledger as kept before segment files; converted to segments, and removed, when the store opens |
//! | `F` | feed name | the checkpoint of that external feed, or a TAXII status, as an earlier version kept them; moved to their files (`values.rs`) and removed when the store opens |

use crate::model::{IndicatorType, Item, ItemKind};

/// Name of the sled tree; the suffix is the format version.
pub const TREE: &str = "entente.v3";
/// Trees of older formats, which this version refuses to open.
pub const OLD_TREES: &[&str] = &["entente.v2", "entente.v1", "meta.v1"];
/// File name of the bundle log in the data directory.
pub const LOG_FILE: &str = "bundles.v4.log";
/// File name of the log a compaction writes; renamed over [`LOG_FILE`] once complete
/// and on disk. One found at open is what a crash left, and is removed.
pub const LOG_FILE_COMPACTING: &str = "bundles.v4.log.compacting";
/// File name of a bundle log of format 3, upgraded in place at open.
pub const LOG_FILE_V3: &str = "bundles.v3.log";
/// What a format-3 log is renamed to once upgraded (kept for the operator to delete).
pub const LOG_FILE_V3_UPGRADED: &str = "bundles.v3.log.upgraded";

pub const CERT: u8 = b'C';
pub const CURSOR: u8 = b'K';
pub const SERVED: u8 = b'P';
/// Per client, the policy fingerprint the TAXII listings last saw (32 bytes) and since
/// when it is in force (i64 big-endian ms): what the client's date added counts from.
pub const LISTED_SINCE: u8 = b'A';
pub const LEDGER: u8 = b'L';
pub const FEED_CHECKPOINT: u8 = b'F';
/// An indicator a compaction dropped as expired, by item UUID: the modified time of
/// the version dropped (i64 big-endian), then its origin. An older or equal version
/// offered again is refused as the log would have refused it, so what its origin
/// retired by letting it expire does not come back.
pub const DROPPED: u8 = b'D';

pub const META_OWNER: &[u8] = b"Mowner";
/// The store format (u32 big-endian): 4 since the bundle log has a header. Absent in
/// a store of format 3.
pub const META_FORMAT: &[u8] = b"Mformat";
/// The store's random id (16 bytes), also in the bundle log's header.
pub const META_STORE_ID: &[u8] = b"Mstore_id";
/// How far the bundle log is known to be on disk (u64 big-endian): damage below it
/// is damage to acknowledged data.
pub const META_LOG_SYNCED: &[u8] = b"Mlog_synced";
/// Change-feed positions up to this one (u64 big-endian) may have been handed out;
/// after a restart numbering goes on above it, so a position a partner may have seen
/// is never given to another bundle.
pub const META_FEED_LEASE: &[u8] = b"Mfeed_lease";
/// The generation of the bundle log the watermark counts (u64 big-endian; absent for
/// generation 0): each compaction writes a log of the next generation, which says so
/// in its header.
pub const META_LOG_GENERATION: &[u8] = b"Mlog_generation";
/// A compaction between writing its log and renaming it into place: the new log's
/// generation, then its synced length (both u64 big-endian). At open, a log of that
/// generation means the rename happened, and this length is its watermark; a log of
/// the generation before means it did not, and the new file is removed.
pub const META_COMPACTING: &[u8] = b"Mcompacting";
/// When the store was rebuilt from its bundle log (i64 big-endian ms), which lost what
/// each client's TAXII listings last saw: a client not recorded since counts as seen
/// under an unknown policy. Absent in a store never rebuilt.
pub const META_LISTING_DATES_LOST: &[u8] = b"Mlisting_dates_lost";
/// The last ledger record: its sequence number (8 bytes big-endian), then its hash
/// (32 bytes).
pub const META_LEDGER_HEAD: &[u8] = b"Mledger_head";
/// The checkpoint the kept ledger starts from once old segments were dropped under
/// retention: the sequence number of the last record dropped (8 bytes big-endian),
/// then the chain hash there (32 bytes). Absent while nothing was dropped.
pub const META_LEDGER_FLOOR: &[u8] = b"Mledger_floor";

/// A bundle's signed parts, logged once when the bundle is first accepted.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BundleHead {
    #[prost(bytes = "vec", tag = "1")]
    pub header_bytes: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
}

/// One version of an item as logged, with its provenance (superseded versions stay
/// in the log; the index knows which is the latest).
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

/// An [`ItemRecord`] whose fields are borrowed from where they are held (the verified
/// bundle, the source): encoded to the very bytes of the record with the same fields,
/// without copying the item's bytes into a record first.
#[derive(Clone, Copy, Debug)]
pub struct ItemRecordRef<'a> {
    pub bundle_uuid: &'a [u8],
    pub index: u32,
    pub salt: &'a [u8],
    pub item_bytes: &'a [u8],
    pub modified_ms: i64,
    pub origin: &'a str,
    pub received_from: &'a str,
    pub hops: u32,
    pub accepted_ms: i64,
}

impl ItemRecordRef<'_> {
    /// How many bytes [`Self::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        use crate::util::proto::{bytes_len, nonzero_len};
        bytes_len(1, self.bundle_uuid)
            + nonzero_len(2, u64::from(self.index))
            + bytes_len(3, self.salt)
            + bytes_len(4, self.item_bytes)
            + nonzero_len(5, self.modified_ms as u64)
            + bytes_len(6, self.origin.as_bytes())
            + bytes_len(7, self.received_from.as_bytes())
            + nonzero_len(8, u64::from(self.hops))
            + nonzero_len(9, self.accepted_ms as u64)
    }

    /// Appends the record's prost encoding, fields in tag order as
    /// [`ItemRecord`]'s generated code writes them.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        use crate::util::proto::{bytes, nonzero};
        bytes(1, self.bundle_uuid, buf);
        nonzero(2, u64::from(self.index), buf);
        bytes(3, self.salt, buf);
        bytes(4, self.item_bytes, buf);
        nonzero(5, self.modified_ms as u64, buf);
        bytes(6, self.origin.as_bytes(), buf);
        bytes(7, self.received_from.as_bytes(), buf);
        nonzero(8, u64::from(self.hops), buf);
        nonzero(9, self.accepted_ms as u64, buf);
    }
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
    /// Empty for a delivery; for a record that is not one (a ledger restarted after
    /// its history was lost), what happened. An empty note is not encoded, so the
    /// bytes (and hashes) of records written before this field existed are unchanged.
    #[prost(string, tag = "8")]
    pub note: String,
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
        IndicatorType::Malware => 11,
        IndicatorType::ThreatActor => 12,
        IndicatorType::IntrusionSet => 13,
        IndicatorType::Campaign => 14,
        IndicatorType::AttackPattern => 15,
        IndicatorType::Tool => 16,
        IndicatorType::Report => 17,
        IndicatorType::Relationship => 18,
        IndicatorType::Identity => 19,
        IndicatorType::Vulnerability => 20,
        IndicatorType::CourseOfAction => 21,
        IndicatorType::Sighting => 22,
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
        ItemKind::Revocation(_) | ItemKind::Context(_) => None,
    }
}

/// The type code a slot records for an item without a value: a context object's type
/// (so a query by type finds it), [`NOT_INDEXED`] for a revocation.
pub fn unvalued_type(item: &Item) -> u8 {
    match &item.kind {
        ItemKind::Context(c) => type_code(c.object_type),
        _ => NOT_INDEXED,
    }
}

/// `L` + sequence: the key of one ledger record.
#[cfg(test)]
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

/// What the in-memory index needs of one logged [`ItemRecord`].
#[derive(Debug, PartialEq, Eq)]
pub struct IndexFields<'a> {
    /// The item's index in its bundle.
    pub index: u32,
    /// The item id's UUID bytes.
    pub uuid: [u8; 16],
    /// Type code and value ([`NOT_INDEXED`] and `None` for a revocation).
    pub ty: u8,
    pub value: Option<&'a [u8]>,
}

/// Reads the index fields of an encoded [`ItemRecord`] without decoding the rest
/// (rebuilding the index at open reads every record). Returns `None` for any
/// encoding this fast path does not handle (a field repeated, an unknown wire
/// type, both kinds of item): the caller then decodes the record in full, so both
/// paths always agree.
pub fn index_fields(record: &[u8]) -> Option<IndexFields<'_>> {
    let (mut index, mut item) = (None, None);
    wire_fields(record, |field, value| match (field, value) {
        (2, Wire::Varint(v)) => once(&mut index, u32::try_from(v).ok()?),
        (4, Wire::Bytes(b)) => once(&mut item, b),
        (2 | 4, _) => None,
        _ => Some(()),
    })?;
    let (mut id, mut indicator, mut revocation) = (None, None, None);
    wire_fields(item.unwrap_or_default(), |field, value| {
        match (field, value) {
            (1, Wire::Bytes(b)) => once(&mut id, b),
            (10, Wire::Bytes(b)) => once(&mut indicator, b),
            (11, Wire::Bytes(b)) => once(&mut revocation, b),
            (1 | 10 | 11, _) => None,
            _ => Some(()),
        }
    })?;
    let id = std::str::from_utf8(id?).ok()?;
    let rest = id
        .get(..11)
        .filter(|p| p.eq_ignore_ascii_case("indicator--"))
        .map(|_| &id[11..])
        .filter(|rest| rest.len() == 36)?;
    let uuid = *uuid::Uuid::try_parse(rest).ok()?.as_bytes();
    let (ty, value) = match (indicator, revocation) {
        (Some(indicator), None) => {
            let (mut ty, mut value) = (None, None);
            wire_fields(indicator, |field, v| match (field, v) {
                (1, Wire::Bytes(b)) => once(&mut ty, b),
                (2, Wire::Bytes(b)) => once(&mut value, b),
                (1 | 2, _) => None,
                _ => Some(()),
            })?;
            let ty = std::str::from_utf8(ty.unwrap_or_default()).ok()?;
            (
                type_code(ty.parse::<IndicatorType>().ok()?),
                Some(value.unwrap_or_default()),
            )
        }
        (None, Some(_)) => (NOT_INDEXED, None),
        _ => return None,
    };
    Some(IndexFields {
        index: index.unwrap_or(0),
        uuid,
        ty,
        value,
    })
}

/// The id of encoded item bytes (its first field), without decoding the rest; `None`
/// if it cannot be read.
pub fn item_id(item_bytes: &[u8]) -> Option<&str> {
    let mut id = None;
    wire_fields(item_bytes, |field, value| match (field, value) {
        (1, Wire::Bytes(b)) => once(&mut id, b),
        (1, _) => None,
        _ => Some(()),
    })?;
    std::str::from_utf8(id?).ok()
}

fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

/// One protobuf field value.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Walks the top-level fields of a protobuf message; `None` on malformed input or
/// when `visit` returns `None`.
fn wire_fields<'a>(
    mut buf: &'a [u8],
    mut visit: impl FnMut(u64, Wire<'a>) -> Option<()>,
) -> Option<()> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first()?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let field = key >> 3;
        let value = match key & 7 {
            0 => Wire::Varint(varint(&mut buf)?),
            1 => {
                buf = buf.get(8..)?;
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let bytes = buf.get(..len)?;
                buf = &buf[len..];
                Wire::Bytes(bytes)
            }
            5 => {
                buf = buf.get(4..)?;
                Wire::Fixed
            }
            _ => return None,
        };
        if field == 0 {
            return None;
        }
        visit(field, value)?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Indicator, ItemId, Revocation, Tlp};
    use prost::Message;

    fn record(item: &Item, index: u32) -> Vec<u8> {
        ItemRecord {
            bundle_uuid: vec![9; 16],
            index,
            salt: vec![1; 16],
            item_bytes: item.encode(),
            modified_ms: item.modified_ms,
            origin: "hq.example".into(),
            received_from: "hq.example".into(),
            hops: 1,
            accepted_ms: 5,
        }
        .encode_to_vec()
    }

    fn indicator(ty: IndicatorType, value: &str) -> Item {
        Item {
            id: ItemId::new_random(),
            modified_ms: 1_700_000_000_000,
            tlp: Tlp::Amber,
            tags: vec!["a".into(), "b".into()],
            kind: ItemKind::Indicator(Indicator {
                indicator_type: ty,
                value: value.into(),
                description: "d".into(),
                confidence: 50,
                kill_chain_phases: vec!["c2".into()],
                valid_from_ms: 1,
                valid_until_ms: Some(2),
                properties: crate::model::StixProperties::none(),
            }),
        }
    }

    #[test]
    fn the_fast_path_agrees_with_a_full_decode() {
        let revocation = Item {
            kind: ItemKind::Revocation(Revocation {
                indicator_type: IndicatorType::Md5,
                reason: "false positive".into(),
                indicator: None,
            }),
            ..indicator(IndicatorType::Md5, "x")
        };
        let items = [
            indicator(IndicatorType::Domain, "c2.example.com"),
            indicator(IndicatorType::Ipv6, "2001:db8::1"),
            indicator(IndicatorType::Sha256, &"ab".repeat(32)),
            revocation,
        ];
        for (at, item) in items.iter().enumerate() {
            let bytes = record(item, at as u32 * 300);
            let fast = index_fields(&bytes).expect("the fast path reads what the store writes");
            let full =
                Item::decode_stored(&ItemRecord::decode(bytes.as_slice()).unwrap().item_bytes)
                    .unwrap();
            assert_eq!(fast.uuid, full.id.uuid_bytes());
            assert_eq!(fast.index, at as u32 * 300);
            let expected = value_of(&full);
            assert_eq!(fast.ty, expected.map_or(NOT_INDEXED, |(ty, _)| ty));
            assert_eq!(fast.value, expected.map(|(_, v)| v.as_bytes()));
        }
    }

    /// The borrowed record encodes to the record's own bytes, at the edges of each
    /// field (empty, zero, negative, long enough for a two-byte length).
    #[test]
    fn a_borrowed_record_encodes_as_the_record() {
        let long = "o".repeat(200);
        for (bundle_uuid, salt, item_bytes) in [
            (vec![9u8; 16], vec![1u8; 16], vec![7u8; 300]),
            (Vec::new(), Vec::new(), Vec::new()),
            (vec![0u8; 16], vec![0u8; 16], vec![0u8; 1]),
        ] {
            for (index, modified_ms, hops, accepted_ms) in [
                (0, 0, 0, 0),
                (1, 1_700_000_000_000, 1, 5),
                (u32::MAX, -1, u32::MAX, i64::MIN),
                (99_999, i64::MAX, 3, -1_000),
            ] {
                for (origin, received_from) in [("", ""), ("hq.example", long.as_str())] {
                    let borrowed = ItemRecordRef {
                        bundle_uuid: &bundle_uuid,
                        index,
                        salt: &salt,
                        item_bytes: &item_bytes,
                        modified_ms,
                        origin,
                        received_from,
                        hops,
                        accepted_ms,
                    };
                    let owned = ItemRecord {
                        bundle_uuid: bundle_uuid.clone(),
                        index,
                        salt: salt.clone(),
                        item_bytes: item_bytes.clone(),
                        modified_ms,
                        origin: origin.to_owned(),
                        received_from: received_from.to_owned(),
                        hops,
                        accepted_ms,
                    };
                    let mut encoded = Vec::new();
                    borrowed.encode(&mut encoded);
                    assert_eq!(encoded, owned.encode_to_vec(), "{borrowed:?}");
                    assert_eq!(borrowed.encoded_len(), encoded.len(), "{borrowed:?}");
                }
            }
        }
    }

    #[test]
    fn anything_unusual_is_left_to_the_full_decode() {
        let item = indicator(IndicatorType::Domain, "c2.example.com");
        let bytes = record(&item, 3);
        // A repeated field (protobuf: the last one wins) is not guessed at.
        let mut twice = bytes.clone();
        twice.extend_from_slice(&[0x10, 0x05]);
        assert_eq!(index_fields(&twice), None);
        // Truncated or garbage input never panics.
        for cut in 0..bytes.len() {
            let _ = index_fields(&bytes[..cut]);
        }
        assert_eq!(index_fields(&[0xff; 12]), None);
        assert_eq!(index_fields(&[0x0b, 0x00]), None);
    }
}
