//! Bundle transfers in parts, both ends: [`split`] turns a bundle redacted for a
//! partner into [`Part`]s of bounded size (the signed header in chunks, then the
//! disclosed items in increasing index order), deterministically, so that a transfer
//! cut short can be continued at a part; an [`Assembly`] takes a transfer's parts as
//! they arrive, in order, checking every item against its leaf digest in the header as
//! it comes, within fixed bounds and the puller's budget of item bytes, until the
//! bundle is whole. No gRPC, no store, no policy here: the puller decides what to do
//! with a bundle, the feed what to send.

use prost::Message;

use super::limits::{MAX_SIGNATURE_BYTES, PART_BYTES};
use crate::crypto::{
    BundleHeader, MAX_HEADER_BYTES, MAX_ITEM_BYTES, SALT_LEN, VerifyError, leaf_digest,
    parse_header, sha256,
};
use crate::engine::PulledBundle;
use crate::wire;

/// Domain prefix of a transfer digest.
const TRANSFER_CONTEXT: &[u8] = b"entente/transfer/v1\0";

/// What part 0 carries besides its chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opening {
    /// Length of the whole header.
    pub header_len: u32,
    /// The origin's signature over the header.
    pub signature: Vec<u8>,
    /// Number of disclosures in the transfer.
    pub disclosed: u32,
}

/// One part of a bundle transfer. Where the bundle stands in the feed travels beside
/// it ([`super::FeedEvent::Part`]), so that the assembly of a transfer needs none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Transfers from the origin to the sender for these items.
    pub hops: u32,
    /// Position in the transfer, from 0.
    pub index: u32,
    /// The transfer's final part.
    pub last: bool,
    /// Identifies the transfer ([`transfer_digest`]).
    pub transfer: [u8; 32],
    /// Part 0's extra fields (`None` in any other part).
    pub opening: Option<Opening>,
    /// The next chunk of the header bytes.
    pub header_chunk: Vec<u8>,
    /// Disclosures, each prefixed by its length.
    pub disclosures: Vec<u8>,
}

/// Where a puller stopped inside a transfer: it asks for the parts from `next_part` on.
/// `P` is a feed position: the serving node's own (`u64`) once opened, an opaque
/// token on the puller's side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume<P = u64> {
    /// The feed position before the bundle's entry: the cursor the transfer continues
    /// from (the `after` its parts came with).
    pub after: P,
    /// Its hop count.
    pub hops: u32,
    /// The transfer's digest.
    pub transfer: [u8; 32],
    /// The first part not received.
    pub next_part: u32,
}

/// The digest naming a transfer: over the part size, the hop count, the header and
/// signature, and the disclosed indices. Two transfers with the same digest are split
/// into the same parts, so one may continue the other; a change of policy (other items
/// disclosed) changes it.
pub fn transfer_digest(hops: u32, bundle: &wire::SignedBundle) -> [u8; 32] {
    let mut data = Vec::with_capacity(TRANSFER_CONTEXT.len() + 76 + 4 * bundle.disclosures.len());
    data.extend_from_slice(TRANSFER_CONTEXT);
    data.extend_from_slice(&(PART_BYTES as u64).to_be_bytes());
    data.extend_from_slice(&hops.to_be_bytes());
    data.extend_from_slice(&sha256(&bundle.header_bytes));
    data.extend_from_slice(&sha256(&bundle.signature));
    for d in &bundle.disclosures {
        data.extend_from_slice(&d.index.to_be_bytes());
    }
    sha256(&data)
}

/// The parts of `bundle`, produced one at a time (only the part being handed out is
/// encoded).
pub fn split(bundle: PulledBundle) -> Split {
    let PulledBundle {
        seq,
        hops,
        mut bundle,
    } = bundle;
    bundle.disclosures.sort_by_key(|d| d.index);
    let transfer = transfer_digest(hops, &bundle);
    Split {
        seq,
        hops,
        transfer,
        bundle,
        header_sent: 0,
        items_sent: 0,
        index: 0,
        done: false,
    }
}

/// The parts of one bundle, in order; see [`split`].
#[derive(Debug)]
pub struct Split {
    seq: u64,
    hops: u32,
    transfer: [u8; 32],
    bundle: wire::SignedBundle,
    header_sent: usize,
    items_sent: usize,
    index: u32,
    done: bool,
}

impl Split {
    /// The transfer's feed position (of the bundle's entry), hop count and digest.
    pub fn key(&self) -> (u64, u32, [u8; 32]) {
        (self.seq, self.hops, self.transfer)
    }

    /// Passes over the parts before `index` without building them (only the sizes of
    /// their items are looked at), so that a transfer continued at a part costs no
    /// more than the parts it sends.
    pub fn skip_to(&mut self, index: u32) {
        while !self.done && self.index < index {
            let (take, end) = self.next_extent();
            self.advance(take, end);
        }
    }

    /// What the next part holds: the bytes of header it takes, and the end of the run of
    /// disclosures (from `items_sent`) it packs. The header comes first, in chunks; then
    /// as many items as fit [`PART_BYTES`], and at least one, whatever its size.
    fn next_extent(&self) -> (usize, usize) {
        let header_len = self.bundle.header_bytes.len();
        let take = (header_len - self.header_sent).min(PART_BYTES);
        let mut used = take;
        let mut end = self.items_sent;
        if self.header_sent + take == header_len {
            while let Some(d) = self.bundle.disclosures.get(end) {
                let len = d.encoded_len();
                let framed = len + prost::length_delimiter_len(len);
                if used > 0 && used + framed > PART_BYTES {
                    break;
                }
                used += framed;
                end += 1;
            }
        }
        (take, end)
    }

    /// Moves past a part of `take` header bytes and the disclosures up to `end`;
    /// whether it was the last.
    fn advance(&mut self, take: usize, end: usize) -> bool {
        self.header_sent += take;
        self.items_sent = end;
        self.index += 1;
        self.done = self.header_sent == self.bundle.header_bytes.len()
            && self.items_sent == self.bundle.disclosures.len();
        self.done
    }
}

impl Iterator for Split {
    type Item = Part;

    fn next(&mut self) -> Option<Part> {
        if self.done {
            return None;
        }
        let (take, end) = self.next_extent();
        let header = &self.bundle.header_bytes;
        let header_chunk = header[self.header_sent..self.header_sent + take].to_vec();
        let mut disclosures = Vec::new();
        for d in &self.bundle.disclosures[self.items_sent..end] {
            // Encoding into a Vec cannot fail: it grows as needed.
            d.encode_length_delimited(&mut disclosures)
                .unwrap_or_default();
        }
        let opening = (self.index == 0).then(|| Opening {
            header_len: u32::try_from(header.len()).unwrap_or(u32::MAX),
            signature: self.bundle.signature.clone(),
            disclosed: u32::try_from(self.bundle.disclosures.len()).unwrap_or(u32::MAX),
        });
        let index = self.index;
        let last = self.advance(take, end);
        Some(Part {
            hops: self.hops,
            index,
            last,
            transfer: self.transfer,
            opening,
            header_chunk,
            disclosures,
        })
    }
}

/// Why a part was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    /// The bundle is refused (its header does not parse, or an item does not match the
    /// header); the rest of its transfer is passed over. The sender may still be honest
    /// about the transfer itself, so the link goes on with the next bundle.
    #[error("bundle rejected: {0}")]
    Refused(VerifyError),
    /// The bundle brings more bytes of items and salts than the budget the assembly was
    /// opened with (the puller's `limits.pull_transfer_bytes`): refused like
    /// [`PartError::Refused`], and what it had brought is let go. The sender may be
    /// honest (the bundle is only larger than this node holds), so the link goes on.
    #[error(
        "the bundle brings more than {0} bytes of items, the most this node holds for one transfer (limits.pull_transfer_bytes)"
    )]
    OverBudget(usize),
    /// The part breaks the transfer protocol (out of order, another transfer's, beyond
    /// a bound, malformed): the sender is broken or hostile; the connection ends and
    /// nothing of the transfer is kept.
    #[error("{0}")]
    Protocol(String),
}

fn protocol(problem: impl Into<String>) -> PartError {
    PartError::Protocol(problem.into())
}

/// What taking a part did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The header became complete with this part (and parsed).
    pub header_complete: bool,
    /// The transfer is complete.
    pub complete: bool,
}

/// A bundle transfer as it arrives, part by part. Holds at most
/// `crypto::MAX_HEADER_BYTES` of header, `crypto::MAX_ITEMS_PER_BUNDLE` disclosures
/// (never more than the header has digests) and its budget of salts and items.
#[derive(Debug)]
pub struct Assembly {
    hops: u32,
    transfer: [u8; 32],
    next_part: u32,
    header_len: usize,
    header_bytes: Vec<u8>,
    signature: Vec<u8>,
    disclosed: u32,
    /// The parsed header and its leaf digests, once the header is complete.
    header: Option<(BundleHeader, Vec<Vec<u8>>)>,
    disclosures: Vec<wire::Disclosure>,
    item_bytes: usize,
    /// Most bytes of salts and items held.
    item_budget: usize,
    /// The bundle was refused: later parts are checked for order and dropped.
    refused: bool,
    complete: bool,
}

impl Assembly {
    /// A transfer begun by its part 0 (taken with [`Assembly::take`] next), holding at
    /// most `item_budget` bytes of salts and items.
    pub fn open(part: &Part, item_budget: usize) -> Result<Self, PartError> {
        let Some(opening) = part.opening.as_ref().filter(|_| part.index == 0) else {
            return Err(protocol(format!(
                "part {} of a bundle came first, not part 0",
                part.index
            )));
        };
        let header_len = opening.header_len as usize;
        if header_len == 0 || header_len > MAX_HEADER_BYTES {
            return Err(protocol(format!(
                "the bundle announces a header of {header_len} bytes; at most {MAX_HEADER_BYTES}"
            )));
        }
        if opening.signature.len() > MAX_SIGNATURE_BYTES {
            return Err(protocol(format!(
                "the bundle carries a signature of {} bytes; at most {MAX_SIGNATURE_BYTES}",
                opening.signature.len()
            )));
        }
        if opening.disclosed as usize > crate::crypto::MAX_ITEMS_PER_BUNDLE {
            return Err(protocol(format!(
                "the bundle announces {} disclosures; a bundle holds at most {}",
                opening.disclosed,
                crate::crypto::MAX_ITEMS_PER_BUNDLE
            )));
        }
        Ok(Self {
            hops: part.hops,
            transfer: part.transfer,
            next_part: 0,
            header_len,
            header_bytes: Vec::new(),
            signature: opening.signature.clone(),
            disclosed: opening.disclosed,
            header: None,
            disclosures: Vec::new(),
            item_bytes: 0,
            item_budget,
            refused: false,
            complete: false,
        })
    }

    /// The sender's hop count for the bundle.
    pub fn hops(&self) -> u32 {
        self.hops
    }

    /// Number of disclosures the transfer announced.
    pub fn disclosed(&self) -> u32 {
        self.disclosed
    }

    /// Whether the last part has been taken.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether the bundle was refused (the rest of its parts are dropped).
    pub fn is_refused(&self) -> bool {
        self.refused
    }

    /// Marks the bundle refused (by a check made outside, on its header).
    pub fn refuse(&mut self) {
        self.refused = true;
        self.disclosures = Vec::new();
        self.item_bytes = 0;
    }

    /// Where to continue this transfer on a new connection, from the cursor `after`
    /// (the one its parts came with).
    pub fn resume<P>(&self, after: P) -> Resume<P> {
        Resume {
            after,
            hops: self.hops,
            transfer: self.transfer,
            next_part: self.next_part,
        }
    }

    /// Whether `part` is the one this transfer expects next.
    pub fn expects(&self, part: &Part) -> bool {
        !self.complete
            && part.hops == self.hops
            && part.transfer == self.transfer
            && part.index == self.next_part
    }

    /// The parsed header, once complete.
    pub fn header(&self) -> Option<&BundleHeader> {
        self.header.as_ref().map(|(h, _)| h)
    }

    /// The header and signature alone, with no disclosure (for checking the header
    /// before the items arrive).
    pub fn header_only(&self) -> Option<wire::SignedBundle> {
        self.header.as_ref().map(|_| wire::SignedBundle {
            header_bytes: self.header_bytes.clone(),
            signature: self.signature.clone(),
            disclosures: Vec::new(),
        })
    }

    /// Takes the next part: appends its header chunk, then checks and keeps each of its
    /// disclosures. A refused bundle's parts are only checked for order.
    pub fn take(&mut self, part: Part) -> Result<Taken, PartError> {
        if !self.expects(&part) {
            return Err(protocol(format!(
                "part {} of a bundle (hops {}) does not follow part {} of the transfer in progress",
                part.index,
                part.hops,
                self.next_part.wrapping_sub(1)
            )));
        }
        // A part that is not the last brings something: so a transfer has a bounded
        // number of parts (its header and items are bounded).
        if !part.last && part.header_chunk.is_empty() && part.disclosures.is_empty() {
            return Err(protocol(format!(
                "part {} of the bundle is empty",
                part.index
            )));
        }
        self.next_part = self.next_part.saturating_add(1);
        let last = part.last;
        let result = self.take_contents(part);
        if self.refused {
            // A refused bundle's transfer still ends with its last part.
            self.complete = last;
        }
        result
    }

    fn take_contents(&mut self, part: Part) -> Result<Taken, PartError> {
        let mut taken = Taken::default();
        if self.refused {
            taken.complete = part.last;
            return Ok(taken);
        }
        if !part.header_chunk.is_empty() {
            if self.header_bytes.len() + part.header_chunk.len() > self.header_len {
                return Err(protocol(format!(
                    "the bundle sends more header than the {} bytes it announced",
                    self.header_len
                )));
            }
            self.header_bytes.extend_from_slice(&part.header_chunk);
            if self.header_bytes.len() == self.header_len {
                match parse_header(&self.header_bytes) {
                    Ok(parsed) => self.header = Some(parsed),
                    Err(error) => {
                        self.refuse();
                        return Err(PartError::Refused(error));
                    }
                }
                taken.header_complete = true;
            }
        }
        if !part.disclosures.is_empty() {
            self.take_disclosures(&part.disclosures)?;
        }
        if part.last {
            if self.header.is_none() {
                return Err(protocol("the bundle ended before its header was complete"));
            }
            if self.disclosures.len() != self.disclosed as usize {
                return Err(protocol(format!(
                    "the bundle ended with {} disclosures of the {} it announced",
                    self.disclosures.len(),
                    self.disclosed
                )));
            }
            self.complete = true;
            taken.complete = true;
        }
        Ok(taken)
    }

    /// Decodes and checks the disclosures of one part, one at a time.
    fn take_disclosures(&mut self, mut bytes: &[u8]) -> Result<(), PartError> {
        let Some((_, digests)) = self.header.as_ref() else {
            return Err(protocol("the bundle sent items before its whole header"));
        };
        while !bytes.is_empty() {
            if self.disclosures.len() >= self.disclosed as usize {
                return Err(protocol(format!(
                    "the bundle sends more than the {} disclosures it announced",
                    self.disclosed
                )));
            }
            // A length-prefixed message: the prefix is checked against what remains
            // before anything is allocated.
            let d = wire::Disclosure::decode_length_delimited(&mut bytes).map_err(|e| {
                protocol(format!(
                    "the bundle sent a disclosure that does not decode: {e}"
                ))
            })?;
            let refused = |error| PartError::Refused(error);
            let Some(digest) = digests.get(d.index as usize) else {
                return Err(self.refused_with(refused(VerifyError::IndexOutOfRange(d.index))));
            };
            if let Some(previous) = self.disclosures.last().filter(|p| d.index <= p.index) {
                return Err(protocol(format!(
                    "the bundle sent item {} after item {}: items come in increasing order, once each",
                    d.index, previous.index
                )));
            }
            if d.salt.len() != SALT_LEN {
                return Err(self.refused_with(refused(VerifyError::BadSalt(d.index))));
            }
            if d.item_bytes.len() > MAX_ITEM_BYTES {
                return Err(self.refused_with(refused(VerifyError::ItemTooLarge(d.index))));
            }
            if leaf_digest(&d.salt, &d.item_bytes).as_slice() != digest.as_slice() {
                return Err(self.refused_with(refused(VerifyError::DigestMismatch(d.index))));
            }
            self.item_bytes += d.salt.len() + d.item_bytes.len();
            if self.item_bytes > self.item_budget {
                return Err(self.refused_with(PartError::OverBudget(self.item_budget)));
            }
            self.disclosures.push(d);
        }
        Ok(())
    }

    /// Refuses the bundle and returns `error`.
    fn refused_with(&mut self, error: PartError) -> PartError {
        self.refuse();
        error
    }

    /// The whole bundle, once complete and not refused.
    pub fn into_bundle(self) -> Option<wire::SignedBundle> {
        (self.complete && !self.refused && self.header.is_some()).then_some(wire::SignedBundle {
            header_bytes: self.header_bytes,
            signature: self.signature,
            disclosures: self.disclosures,
        })
    }
}

/// The disclosures packed in a part's bytes, decoded one at a time (for tools that
/// count what a pull carries).
pub fn disclosures(mut bytes: &[u8]) -> impl Iterator<Item = Result<wire::Disclosure, String>> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let decoded = wire::Disclosure::decode_length_delimited(&mut bytes);
        if decoded.is_err() {
            bytes = &[];
        }
        Some(decoded.map_err(|e| e.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(items: usize, item_len: usize) -> wire::SignedBundle {
        // Digests need not be real here: only the transfer's shape is checked.
        let disclosures: Vec<wire::Disclosure> = (0..items)
            .map(|i| wire::Disclosure {
                index: i as u32,
                salt: vec![1; SALT_LEN],
                item_bytes: vec![7; item_len],
            })
            .collect();
        wire::SignedBundle {
            header_bytes: vec![9; 3 * PART_BYTES / 2],
            signature: vec![5; 70],
            disclosures,
        }
    }

    #[test]
    fn a_bundle_splits_into_bounded_parts_header_first_and_deterministically() {
        let b = bundle(3000, 1000);
        let parts: Vec<Part> = split(PulledBundle {
            seq: 4,
            hops: 1,
            bundle: b.clone(),
        })
        .collect();
        assert!(parts.len() > 3, "{} parts", parts.len());
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.index as usize, i);
            assert!(p.header_chunk.len() + p.disclosures.len() <= PART_BYTES);
            assert_eq!(p.last, i == parts.len() - 1);
            assert_eq!(p.opening.is_some(), i == 0);
        }
        // The header comes first, whole, before any item.
        assert_eq!(parts[0].header_chunk.len(), PART_BYTES);
        assert!(parts[0].disclosures.is_empty());
        let header: Vec<u8> = parts.iter().flat_map(|p| p.header_chunk.clone()).collect();
        assert_eq!(header, b.header_bytes);
        let items: Vec<wire::Disclosure> = parts
            .iter()
            .flat_map(|p| {
                disclosures(&p.disclosures)
                    .map(Result::unwrap)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(items, b.disclosures);
        // The same bundle, its disclosures in another order, splits the same way.
        let mut shuffled = b.clone();
        shuffled.disclosures.reverse();
        let again: Vec<Part> = split(PulledBundle {
            seq: 4,
            hops: 1,
            bundle: shuffled,
        })
        .collect();
        assert_eq!(again, parts);
        // Another disclosure set is another transfer.
        let mut fewer = b;
        fewer.disclosures.pop();
        assert_ne!(transfer_digest(1, &fewer), parts[0].transfer);
    }

    /// A transfer continued at a part gets exactly the parts from there on, built from
    /// that part only: for a header over several parts, parts of items, and a skip past
    /// the end.
    #[test]
    fn a_split_skipped_to_a_part_goes_on_with_exactly_the_parts_from_there() {
        let mut varied = bundle(300, 0);
        for (i, d) in varied.disclosures.iter_mut().enumerate() {
            d.item_bytes = vec![3; (i * 7919) % MAX_ITEM_BYTES];
        }
        let mut small_header = bundle(700, 3000);
        small_header.header_bytes = vec![9; 300];
        for b in [bundle(3000, 1000), varied, small_header] {
            let whole = || {
                split(PulledBundle {
                    seq: 4,
                    hops: 1,
                    bundle: b.clone(),
                })
            };
            let parts: Vec<Part> = whole().collect();
            assert!(parts.len() > 2, "{} parts", parts.len());
            for at in 0..=parts.len() + 1 {
                let mut skipped = whole();
                skipped.skip_to(at as u32);
                let rest: Vec<Part> = skipped.collect();
                assert_eq!(rest, parts[at.min(parts.len())..], "skipped to part {at}");
            }
        }
    }

    /// Why a pull message holds no repeated message field: an empty `Disclosure` is two
    /// bytes on the wire (tag and zero length) but a 56-byte struct once decoded, 28
    /// times its size, and up to 56 times while the vector that holds it doubles.
    #[test]
    fn a_decoded_empty_disclosure_is_28_times_its_wire_size() {
        let empty = wire::Disclosure::default();
        let on_the_wire = wire::SignedBundle {
            disclosures: vec![empty],
            ..Default::default()
        }
        .encoded_len();
        assert_eq!(on_the_wire, 2);
        assert_eq!(std::mem::size_of::<wire::Disclosure>(), 56);
    }

    #[test]
    fn parts_out_of_order_or_of_another_transfer_are_refused() {
        let parts: Vec<Part> = split(PulledBundle {
            seq: 4,
            hops: 1,
            bundle: bundle(3000, 1000),
        })
        .collect();
        assert!(matches!(
            Assembly::open(&parts[1], usize::MAX),
            Err(PartError::Protocol(_))
        ));
        let mut assembly = Assembly::open(&parts[0], usize::MAX).unwrap();
        assembly.take(parts[0].clone()).ok();
        let mut skipped = parts[2].clone();
        assert!(matches!(
            assembly.take(skipped.clone()),
            Err(PartError::Protocol(_))
        ));
        skipped.index = 1;
        skipped.transfer = [0; 32];
        assert!(matches!(
            assembly.take(skipped),
            Err(PartError::Protocol(_))
        ));
        // A part that brings nothing and is not the last.
        let mut empty = parts[1].clone();
        empty.header_chunk.clear();
        empty.disclosures.clear();
        assert!(!empty.last);
        assert!(matches!(assembly.take(empty), Err(PartError::Protocol(_))));
    }
}
