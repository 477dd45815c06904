//! The disclosure ledger: what a record's hash is, the head kept in the metadata, and
//! the parts that keep the ledger: the compact segment format (`segment.rs`), the
//! segment files with their rotation, reading, checking and retention (`files.rs`), and
//! the writer that gathers deliveries' records into one append (`writer.rs`).
//!
//! A record's hash is SHA-256 of [`DOMAIN`] followed by the record's canonical form
//! ([`encode_record`]: its sequence number, content and the previous record's hash),
//! so changing, removing or moving any record changes every hash after it. Segments
//! store records compactly, not in that form; the hash is computed again from what is
//! read. Stores of the previous layout kept each record in that canonical form as one
//! sled value; [`ChainWalk`] checks such a chain, and the store converts it to
//! segments when it opens (the hashes, and so the head, stay the same).

pub mod files;
pub mod segment;
pub mod writer;

use prost::Message;

use super::records::{LedgerDelivery, LedgerRecordBytes};
use super::{LedgerCheck, LedgerEntry, LedgerRecord};
use crate::model::{BundleId, NodeId};

/// Domain separation of ledger hashes from every other SHA-256 in the system.
pub const DOMAIN: &[u8] = b"entente/ledger/v1\0";

/// The link of the first record.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// Length of the stored head: sequence number (8 bytes) and hash (32 bytes).
const HEAD_BYTES: usize = 40;

/// The last record of the ledger: its sequence number and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The last sequence number (0 when the ledger is empty).
    pub seq: u64,
    /// The last record's hash ([`GENESIS`] when the ledger is empty).
    pub hash: [u8; 32],
}

impl Head {
    /// The head of an empty ledger.
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: GENESIS,
    };

    /// The stored form: sequence number big-endian, then the hash.
    pub fn encode(&self) -> [u8; HEAD_BYTES] {
        let mut out = [0u8; HEAD_BYTES];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..].copy_from_slice(&self.hash);
        out
    }

    /// Parses the stored form (`None` unless it is exactly 40 bytes).
    pub fn decode(bytes: &[u8]) -> Option<Head> {
        let bytes: &[u8; HEAD_BYTES] = bytes.try_into().ok()?;
        let (seq, hash) = bytes.split_at(8);
        Some(Head {
            seq: u64::from_be_bytes(seq.try_into().ok()?),
            hash: hash.try_into().ok()?,
        })
    }
}

/// The hash of one record's stored bytes, which the next record links to.
pub fn link_hash(stored: &[u8]) -> [u8; 32] {
    let mut message = Vec::with_capacity(DOMAIN.len() + stored.len());
    message.extend_from_slice(DOMAIN);
    message.extend_from_slice(stored);
    crate::crypto::sha256(&message)
}

/// The stored bytes of record `seq` holding `entry`, linked to `prev_hash`.
pub fn encode_record(seq: u64, entry: &LedgerEntry, prev_hash: &[u8; 32]) -> Vec<u8> {
    LedgerRecordBytes {
        seq,
        time_ms: entry.time_ms,
        partner: entry.partner.as_str().to_owned(),
        path: entry.path.clone(),
        deliveries: entry
            .deliveries
            .iter()
            .map(|(bundle, indices)| LedgerDelivery {
                bundle_uuid: bundle.uuid_bytes().to_vec(),
                indices: indices.clone(),
            })
            .collect(),
        policy_hash: entry.policy_hash.to_vec(),
        note: entry.note.clone(),
        prev_hash: prev_hash.to_vec(),
    }
    .encode_to_vec()
}

/// A stored record decoded completely, with its hash; the error says what does not
/// decode.
pub fn decode_record(stored: &[u8]) -> Result<LedgerRecord, String> {
    let raw = LedgerRecordBytes::decode(stored).map_err(|e| e.to_string())?;
    record_of(raw, stored)
}

/// Decodes `stored` when it passes the filters (checked before the rest is decoded);
/// `Ok(None)` when it does not.
pub fn decode_if(
    stored: &[u8],
    partner: Option<&NodeId>,
    since_ms: Option<i64>,
) -> Result<Option<LedgerRecord>, String> {
    let raw = LedgerRecordBytes::decode(stored).map_err(|e| e.to_string())?;
    if partner.is_some_and(|p| p.as_str() != raw.partner)
        || since_ms.is_some_and(|since| raw.time_ms < since)
    {
        return Ok(None);
    }
    record_of(raw, stored).map(Some)
}

fn record_of(raw: LedgerRecordBytes, stored: &[u8]) -> Result<LedgerRecord, String> {
    let deliveries =
        raw.deliveries
            .into_iter()
            .map(|d| {
                let uuid: [u8; 16] =
                    d.bundle_uuid.as_slice().try_into().map_err(|_| {
                        format!("bundle id is {} bytes, not 16", d.bundle_uuid.len())
                    })?;
                Ok((BundleId::from_uuid_bytes(uuid), d.indices))
            })
            .collect::<Result<_, String>>()?;
    Ok(LedgerRecord {
        seq: raw.seq,
        entry: LedgerEntry {
            time_ms: raw.time_ms,
            partner: NodeId::new(&raw.partner).map_err(|e| format!("partner: {e}"))?,
            path: raw.path,
            deliveries,
            policy_hash: hash32(&raw.policy_hash, "policy hash")?,
            note: raw.note,
        },
        prev_hash: hash32(&raw.prev_hash, "previous hash")?,
        hash: link_hash(stored),
    })
}

fn hash32(bytes: &[u8], what: &str) -> Result<[u8; 32], String> {
    bytes
        .try_into()
        .map_err(|_| format!("{what} is {} bytes, not 32", bytes.len()))
}

/// A problem found by the walk: the record it is attributed to and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    /// The record the problem is attributed to.
    pub seq: u64,
    /// What is wrong, for an operator.
    pub problem: String,
}

impl From<Broken> for LedgerCheck {
    fn from(b: Broken) -> Self {
        LedgerCheck::Broken {
            seq: b.seq,
            problem: b.problem,
        }
    }
}

/// Checks a stored chain fed to it in key order, and attributes the first problem to
/// a record.
///
/// A broken link into record n means either record n-1 was changed (its hash moved)
/// or record n's own link was. The walk tells them apart by looking one record
/// further: if record n still hashes to the link held by record n+1 (or to the head),
/// record n is as written and record n-1 was altered; otherwise record n was.
#[derive(Debug)]
pub struct ChainWalk {
    /// The sequence number the next record must have.
    expected: u64,
    /// The hash of the last stored value walked ([`GENESIS`] at the start).
    last_hash: [u8; 32],
    /// A record whose link to the one before is broken, not yet attributed.
    suspect: Option<u64>,
}

impl Default for ChainWalk {
    fn default() -> Self {
        Self {
            expected: 1,
            last_hash: GENESIS,
            suspect: None,
        }
    }
}

impl ChainWalk {
    /// A walk from the start of the ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next stored entry: its key's sequence number and its stored bytes.
    pub fn step(&mut self, key_seq: u64, stored: &[u8]) -> Result<(), Broken> {
        if key_seq < self.expected {
            // Keys come in order, so only a record numbered 0 can land here.
            self.unresolved()?;
            return Err(Broken {
                seq: key_seq,
                problem: format!(
                    "a record was inserted at position {key_seq}, before the start of the ledger"
                ),
            });
        }
        if key_seq > self.expected {
            self.unresolved()?;
            let first = self.expected;
            let problem = if key_seq - first == 1 {
                format!("record {first} is missing")
            } else {
                format!("records {first} to {} are missing", key_seq - 1)
            };
            return Err(Broken {
                seq: first,
                problem,
            });
        }
        let hash = link_hash(stored);
        let record = match decode_record(stored) {
            Ok(record) => record,
            Err(e) => {
                self.unresolved()?;
                return Err(altered(key_seq, format!("it no longer decodes: {e}")));
            }
        };
        if record.seq != key_seq {
            self.unresolved()?;
            return Err(if record.prev_hash == self.last_hash {
                // It links correctly into this position: its number was edited.
                altered(
                    key_seq,
                    format!("its stored sequence number reads {}", record.seq),
                )
            } else {
                Broken {
                    seq: key_seq,
                    problem: format!(
                        "records out of order: record {} is stored at position {key_seq}",
                        record.seq
                    ),
                }
            });
        }
        if let Some(suspect) = self.suspect.take() {
            let next = format!("the link in record {key_seq}");
            return Err(attribute(
                suspect,
                record.prev_hash == self.last_hash,
                &next,
            ));
        }
        if record.prev_hash != self.last_hash {
            if key_seq == 1 {
                return Err(altered(1, "its link is not the start of the ledger".into()));
            }
            self.suspect = Some(key_seq);
        }
        self.last_hash = hash;
        self.expected += 1;
        Ok(())
    }

    /// The verdict once every record up to the head has been walked. `head` is `None`
    /// when meta holds no head (only right for an empty ledger).
    pub fn finish(mut self, head: Option<Head>) -> LedgerCheck {
        let last = self.expected - 1;
        let head = match head {
            Some(head) => head,
            None if last == 0 => {
                return LedgerCheck::Intact {
                    records: 0,
                    head: GENESIS,
                    from: 0,
                };
            }
            None => {
                return Broken {
                    seq: 1,
                    problem: format!("the ledger head is missing but {last} records exist"),
                }
                .into();
            }
        };
        if last > head.seq {
            if let Err(b) = self.unresolved() {
                return b.into();
            }
            return beyond_head(head.seq + 1, Some(head));
        }
        if last < head.seq {
            if let Err(b) = self.unresolved() {
                return b.into();
            }
            let removed = head.seq - last;
            let problem = match (last, removed) {
                (0, _) => format!(
                    "all {removed} records were removed (head says {}, found none)",
                    head.seq
                ),
                (_, 1) => format!(
                    "the last record was removed (head says {}, found {last})",
                    head.seq
                ),
                _ => format!(
                    "the last {removed} records were removed (head says {}, found {last})",
                    head.seq
                ),
            };
            return Broken {
                seq: last + 1,
                problem,
            }
            .into();
        }
        if let Some(suspect) = self.suspect.take() {
            return attribute(suspect, head.hash == self.last_hash, "the ledger head").into();
        }
        if head.hash != self.last_hash {
            return if last == 0 {
                Broken {
                    seq: 0,
                    problem: "the ledger head was altered (no records, but a head hash)".into(),
                }
            } else {
                altered(last, "its hash does not match the ledger head".into())
            }
            .into();
        }
        LedgerCheck::Intact {
            records: last,
            head: head.hash,
            from: 0,
        }
    }

    /// Reports a pending broken link that the next record cannot settle.
    fn unresolved(&mut self) -> Result<(), Broken> {
        match self.suspect.take() {
            None => Ok(()),
            Some(n) => Err(Broken {
                seq: n - 1,
                problem: format!(
                    "record {} or record {n} was altered (record {n} does not link to record {})",
                    n - 1,
                    n - 1
                ),
            }),
        }
    }
}

/// Attributes a broken link into record `n`: `n_is_intact` says whether record n
/// still hashes to what follows it (`next`: the next record's link or the head).
fn attribute(n: u64, n_is_intact: bool, next: &str) -> Broken {
    if n_is_intact {
        altered(
            n - 1,
            format!("its hash does not match the link in record {n}"),
        )
    } else {
        altered(
            n,
            format!(
                "its link to record {} does not match, nor does its hash match {next}",
                n - 1
            ),
        )
    }
}

fn altered(seq: u64, why: String) -> Broken {
    Broken {
        seq,
        problem: format!("record {seq} was altered ({why})"),
    }
}

/// The verdict when records exist past the head: the head was rolled back, or records
/// were added behind the node's back.
pub fn beyond_head(first_extra: u64, head: Option<Head>) -> LedgerCheck {
    let problem = match head {
        Some(head) => format!(
            "record {first_extra} lies beyond the ledger head (head says {}): the head was rolled back or records were added",
            head.seq
        ),
        None => format!("the ledger head is missing but record {first_extra} exists"),
    };
    Broken {
        seq: first_extra,
        problem,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> LedgerEntry {
        LedgerEntry {
            time_ms: 1_700_000_000_000 + i as i64,
            partner: NodeId::new(if i % 2 == 0 {
                "berlin.office"
            } else {
                "paris.cert"
            })
            .unwrap(),
            path: "query".into(),
            deliveries: vec![
                (BundleId::new_random(), vec![0, 3, 7]),
                (BundleId::new_random(), vec![i as u32]),
            ],
            policy_hash: crate::crypto::sha256(b"policy v1"),
            note: String::new(),
        }
    }

    /// A chain of `n` stored records and its head.
    fn chain(n: u64) -> (Vec<(u64, Vec<u8>)>, Head) {
        let mut head = Head::EMPTY;
        let mut out = Vec::new();
        for seq in 1..=n {
            let stored = encode_record(seq, &entry(seq), &head.hash);
            head = Head {
                seq,
                hash: link_hash(&stored),
            };
            out.push((seq, stored));
        }
        (out, head)
    }

    fn walk(records: &[(u64, Vec<u8>)], head: Option<Head>) -> LedgerCheck {
        let mut walk = ChainWalk::new();
        for (seq, stored) in records {
            if let Err(b) = walk.step(*seq, stored) {
                return b.into();
            }
        }
        walk.finish(head)
    }

    fn broken(check: LedgerCheck) -> (u64, String) {
        match check {
            LedgerCheck::Broken { seq, problem } => (seq, problem),
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn records_round_trip_and_head_round_trips() {
        let e = entry(4);
        let stored = encode_record(4, &e, &[9u8; 32]);
        let record = decode_record(&stored).unwrap();
        assert_eq!(record.seq, 4);
        assert_eq!(record.entry, e);
        assert_eq!(record.prev_hash, [9u8; 32]);
        assert_eq!(record.hash, link_hash(&stored));
        let head = Head {
            seq: 77,
            hash: [5u8; 32],
        };
        assert_eq!(Head::decode(&head.encode()), Some(head));
        assert_eq!(Head::decode(&[0u8; 39]), None);
    }

    #[test]
    fn link_hash_is_domain_separated() {
        let stored = encode_record(1, &entry(1), &GENESIS);
        assert_ne!(link_hash(&stored), crate::crypto::sha256(&stored));
    }

    #[test]
    fn an_untouched_chain_is_intact() {
        let (records, head) = chain(10);
        assert_eq!(
            walk(&records, Some(head)),
            LedgerCheck::Intact {
                records: 10,
                head: head.hash,
                from: 0
            }
        );
        assert_eq!(
            walk(&[], None),
            LedgerCheck::Intact {
                records: 0,
                head: GENESIS,
                from: 0
            }
        );
    }

    /// Every single-byte change of record 5 (first of 10, middle, last) is
    /// attributed to that record.
    #[test]
    fn any_flipped_byte_is_attributed_to_the_altered_record() {
        let (records, head) = chain(10);
        for target in [1usize, 5, 10] {
            let len = records[target - 1].1.len();
            for at in 0..len {
                for mask in [0x01u8, 0x80, 0xff] {
                    let mut tampered = records.clone();
                    tampered[target - 1].1[at] ^= mask;
                    let (seq, problem) = broken(walk(&tampered, Some(head)));
                    assert_eq!(seq, target as u64, "byte {at} ^ {mask:#x}: {problem}");
                    assert!(
                        problem.starts_with(&format!("record {target} was altered")),
                        "byte {at} ^ {mask:#x}: {problem}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_consistently_rewritten_record_is_caught_by_the_next_link() {
        let (mut records, head) = chain(10);
        let prev = decode_record(&records[3].1).unwrap().hash;
        let mut forged = entry(5);
        forged.deliveries.clear();
        records[4].1 = encode_record(5, &forged, &prev);
        assert_eq!(
            broken(walk(&records, Some(head))),
            (
                5,
                "record 5 was altered (its hash does not match the link in record 6)".into()
            )
        );
    }

    #[test]
    fn the_last_record_altered_is_caught_by_the_head() {
        let (mut records, head) = chain(10);
        let prev = decode_record(&records[8].1).unwrap().hash;
        records[9].1 = encode_record(10, &entry(99), &prev);
        assert_eq!(
            broken(walk(&records, Some(head))),
            (
                10,
                "record 10 was altered (its hash does not match the ledger head)".into()
            )
        );
    }

    #[test]
    fn removed_records_are_named() {
        let (records, head) = chain(10);
        let mut one = records.clone();
        one.remove(4);
        assert_eq!(
            broken(walk(&one, Some(head))),
            (5, "record 5 is missing".into())
        );
        let mut three = records.clone();
        three.drain(4..7);
        assert_eq!(
            broken(walk(&three, Some(head))),
            (5, "records 5 to 7 are missing".into())
        );
        let mut first = records.clone();
        first.remove(0);
        assert_eq!(
            broken(walk(&first, Some(head))),
            (1, "record 1 is missing".into())
        );
    }

    #[test]
    fn a_truncated_tail_is_named() {
        let (records, head) = chain(10);
        assert_eq!(
            broken(walk(&records[..8], Some(head))),
            (
                9,
                "the last 2 records were removed (head says 10, found 8)".into()
            )
        );
        assert_eq!(
            broken(walk(&records[..9], Some(head))),
            (
                10,
                "the last record was removed (head says 10, found 9)".into()
            )
        );
        assert_eq!(
            broken(walk(&[], Some(head))),
            (
                1,
                "all 10 records were removed (head says 10, found none)".into()
            )
        );
    }

    #[test]
    fn swapped_records_are_out_of_order() {
        let (mut records, head) = chain(10);
        let (a, b) = (records[4].1.clone(), records[5].1.clone());
        records[4].1 = b;
        records[5].1 = a;
        assert_eq!(
            broken(walk(&records, Some(head))),
            (
                5,
                "records out of order: record 6 is stored at position 5".into()
            )
        );
    }

    #[test]
    fn a_missing_head_with_records_is_broken() {
        let (records, _) = chain(3);
        assert_eq!(broken(walk(&records, None)).0, 1);
        assert_eq!(broken(beyond_head(4, Some(Head::EMPTY))).0, 4);
    }
}
