//! The in-memory index over the bundle log: one slot per item record, in log order,
//! with hash tables by item id and by value, the lists of STIX patterns per value they
//! name, the bundles and the change feed. It is rebuilt from the log when the store
//! opens ([`replay`]), and every append goes through the same [`Index::apply`], so
//! both build the same index.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;

use hashbrown::{HashTable, hash_table};
use prost::Message;

use super::StoreError;
use super::log::{Frame, Span};
use super::records::{self, ItemRecord};
use crate::model::{BundleId, IndicatorType, Item};

/// No slot (end of a value chain).
pub(super) const NONE: u32 = u32::MAX;

/// One item record in the log, as the index knows it (44 bytes: packed to 4-byte
/// alignment, with its index in its bundle, liveness and type code sharing one word).
/// The two hash tables hold slot numbers only (4 bytes and a control byte per bucket)
/// and compare through these fields; with them, an item costs about 63 bytes of memory
/// (measured at ten million items in bundles of 1,000).
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
pub(super) struct Slot {
    /// Where its record starts in the log.
    pub(super) offset: u64,
    /// Keyed hash of its type and value (0 for revocations, which have none).
    pub(super) value_hash: u64,
    /// Its item id.
    pub(super) uuid: [u8; 16],
    /// Its record's length.
    pub(super) len: u32,
    /// The previous slot with the same value hash ([`NONE`] at the end).
    pub(super) next: u32,
    /// Index in its bundle (bits 0 to 22), whether this is the latest version of its id
    /// held (bit 23), and its type code (bits 24 to 31; [`records::NOT_INDEXED`] for
    /// revocations).
    pub(super) meta: u32,
}

/// Bits of [`Slot::meta`] that hold the index in the bundle.
pub(super) const SLOT_INDEX_BITS: u32 = (1 << 23) - 1;
/// The bit of [`Slot::meta`] that says the slot is live.
pub(super) const SLOT_LIVE: u32 = 1 << 23;

const _: () = assert!(crate::crypto::MAX_ITEMS_PER_BUNDLE as u64 <= SLOT_INDEX_BITS as u64);

/// Slots in chunks of fixed size: growing never copies the slots held or leaves
/// half of a doubled allocation unused (a `Vec` of a million slots would briefly hold
/// 72 MB to grow).
pub(super) struct Slots {
    pub(super) chunks: Vec<Vec<Slot>>,
    pub(super) len: usize,
}

/// Slots per chunk (3 MiB each).
pub(super) const CHUNK_SLOTS: usize = 1 << 16;

const _: () = assert!(std::mem::size_of::<Slot>() == 44);

impl Slots {
    pub(super) fn new() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn get(&self, at: usize) -> Option<&Slot> {
        self.chunks.get(at / CHUNK_SLOTS)?.get(at % CHUNK_SLOTS)
    }

    pub(super) fn push(&mut self, slot: Slot) {
        if self.len % CHUNK_SLOTS == 0 {
            self.chunks.push(Vec::with_capacity(CHUNK_SLOTS));
        }
        self.chunks
            .last_mut()
            .expect("a chunk was just added if none had room")
            .push(slot);
        self.len += 1;
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = Slot;

    fn index(&self, at: usize) -> &Slot {
        &self.chunks[at / CHUNK_SLOTS][at % CHUNK_SLOTS]
    }
}

impl std::ops::IndexMut<usize> for Slots {
    fn index_mut(&mut self, at: usize) -> &mut Slot {
        &mut self.chunks[at / CHUNK_SLOTS][at % CHUNK_SLOTS]
    }
}

impl Slot {
    pub(super) fn new(span: Span, uuid: [u8; 16], value_hash: u64, index: u32, ty: u8) -> Self {
        Self {
            offset: span.offset,
            value_hash,
            uuid,
            len: span.len,
            next: NONE,
            meta: (index & SLOT_INDEX_BITS) | SLOT_LIVE | (u32::from(ty) << 24),
        }
    }

    pub(super) fn span(&self) -> Span {
        Span {
            offset: self.offset,
            len: self.len,
        }
    }

    /// Its index in its bundle.
    pub(super) fn index(&self) -> u32 {
        self.meta & SLOT_INDEX_BITS
    }

    /// Its type code.
    pub(super) fn ty(&self) -> u8 {
        (self.meta >> 24) as u8
    }

    /// Whether it is the latest version of its id held.
    pub(super) fn live(&self) -> bool {
        self.meta & SLOT_LIVE != 0
    }

    /// Marks it as replaced by a later version.
    pub(super) fn retire(&mut self) {
        self.meta &= !SLOT_LIVE;
    }
}

/// A bundle as the index knows it.
pub(super) struct BundleEntry {
    /// Its head (signed header and signature) in the log.
    pub(super) head: Span,
    /// Its latest place in the change feed.
    pub(super) feed_seq: u64,
    /// Every item record logged for it (older ones may no longer be live), as runs of
    /// consecutive slots (first slot, count): one run per frame, since a frame's
    /// records get consecutive slots; most bundles arrive in one frame.
    pub(super) runs: Vec<(u32, u32)>,
}

impl BundleEntry {
    /// Its slots, in log order.
    pub(super) fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.runs
            .iter()
            .flat_map(|&(first, count)| first..first + count)
    }
}

/// The items a frame stores, as [`Index::waiting`] reads them: by UUID, the type code
/// and what each references ([`ref_keys`]).
pub(super) type Pending = HashMap<[u8; 16], (u8, Vec<RefKey>)>;

/// What [`Index::waiting`] finds: bundles to offer again, in the order found, and the
/// items in them that waited.
#[derive(Default)]
pub(super) struct Waiting {
    pub(super) bundles: Vec<[u8; 16]>,
    pub(super) items: Vec<[u8; 16]>,
    /// Those of `items` offered again for a release, not because they waited, each with
    /// the released object it was offered again for.
    pub(super) released: Vec<([u8; 16], [u8; 16])>,
}

/// How many times one object is offered again for releases of one object it
/// references, per version of it: enough for the steps an object's marking, tags and
/// recipients go down in, few enough that a writer who raises and lowers a marking
/// again and again cannot make the node send every referrer's bundle out each time.
pub(super) const MAX_RELEASES_PER_REFERENCE: u8 = 4;

/// What the index keeps of an item that references other objects by structure.
pub(super) struct References {
    /// The bundle of its latest version.
    pub(super) bundle: [u8; 16],
    /// What it references ([`ref_keys`]).
    pub(super) refs: Vec<RefKey>,
}

/// One reference: the UUID, and the type code the item held under it must have
/// ([`INDICATOR_REF`] for an indicator).
pub(super) type RefKey = ([u8; 16], u8);

/// The type code of a reference to an indicator: any indicator's type code, or a
/// revocation's, matches it.
pub(super) const INDICATOR_REF: u8 = u8::MAX;

/// Whether an item held with type code `held` is what a reference wanting `wanted`
/// names (one UUID, one type: the store keeps an id under its own type only).
fn is_referenced_type(held: u8, wanted: u8) -> bool {
    if wanted == INDICATOR_REF {
        held <= records::type_code(IndicatorType::StixPattern)
    } else {
        held == wanted
    }
}

/// One item of a frame, ready for the index.
pub(super) struct NewItem {
    pub(super) span: Span,
    pub(super) uuid: [u8; 16],
    pub(super) index: u32,
    pub(super) ty: u8,
    pub(super) value_hash: Option<u64>,
    /// The keyed hashes of the values a STIX pattern names ([`observed_hashes`]).
    pub(super) observed: Vec<u64>,
    /// What it references by structure ([`Item::refs`]: a relationship's ends, a
    /// report's objects, a sighting's), as [`ref_keys`] gives it.
    pub(super) refs: Vec<RefKey>,
}

/// The indexes over the log, in memory. Slots are numbered in log order, so the
/// numbering is the same after every open.
pub(super) struct Index {
    pub(super) slots: Slots,
    /// Latest slot per item id.
    pub(super) by_id: HashTable<u32>,
    /// Newest slot per value hash; older ones chain through [`Slot::next`].
    pub(super) by_value: HashTable<u32>,
    /// The slots of STIX patterns per hash of a value they name, in log order: a
    /// pattern names several values, and a slot has room for one chain only.
    pub(super) observed: HashMap<u64, Vec<u32>>,
    /// For each slot that replaced an earlier version of its id, the slot it replaced:
    /// from the latest (`by_id`), an id's versions chain back to its first. Only
    /// superseded versions take room here (about 12 bytes each), and a compaction,
    /// which drops them, empties it.
    pub(super) previous: HashMap<u32, u32>,
    pub(super) bundles: HashMap<[u8; 16], BundleEntry>,
    /// For each UUID that items reference by structure ([`NewItem::refs`]), the UUIDs
    /// of the items that do (what any version of them named, so some may name it no
    /// longer). Only some context objects reference, so most stores keep little here.
    pub(super) referrers: HashMap<[u8; 16], HashSet<[u8; 16]>>,
    /// The items recorded again by [`Index::waiting`]'s finding since the store was
    /// opened or compacted, and not replaced by a new version since: not offered again.
    pub(super) offered_again: HashSet<[u8; 16]>,
    /// For each item recorded again since the store was opened or compacted because an
    /// object it references was released (a new version of it with a lower marking,
    /// other tags or types, wider recipients, a later expiry, or a copy by a shorter
    /// path), and not replaced by a new version since: how many times, per object
    /// released, at most [`MAX_RELEASES_PER_REFERENCE`].
    pub(super) released_again: HashMap<[u8; 16], HashMap<[u8; 16], u8>>,
    /// For each item whose latest version references by structure: that version's
    /// bundle and references.
    pub(super) references: HashMap<[u8; 16], References>,
    /// Change feed: position → bundle.
    pub(super) feed: BTreeMap<u64, [u8; 16]>,
    /// Keyed per process, so values cannot be chosen to collide.
    pub(super) hasher: RandomState,
}

impl Index {
    pub(super) fn new() -> Self {
        Self::with_hasher(RandomState::new())
    }

    /// An empty index whose values hash as `hasher` does (a compaction's new index
    /// hashes as the one it replaces, which the store also hashes with).
    pub(super) fn with_hasher(hasher: RandomState) -> Self {
        Self {
            slots: Slots::new(),
            by_id: HashTable::new(),
            by_value: HashTable::new(),
            observed: HashMap::new(),
            previous: HashMap::new(),
            bundles: HashMap::new(),
            referrers: HashMap::new(),
            offered_again: HashSet::new(),
            released_again: HashMap::new(),
            references: HashMap::new(),
            feed: BTreeMap::new(),
            hasher,
        }
    }

    /// Makes room for `items` more item records without growing the tables on the
    /// way (growing rehashes every id).
    pub(super) fn reserve(&mut self, items: usize) {
        let Self {
            slots,
            by_id,
            by_value,
            hasher,
            ..
        } = self;
        by_id.reserve(items, |&s| hasher.hash_one(slots[s as usize].uuid));
        by_value.reserve(items, |&s| slots[s as usize].value_hash);
    }

    /// The latest slot of item `uuid`.
    pub(super) fn latest(&self, uuid: &[u8; 16]) -> Option<u32> {
        let slots = &self.slots;
        self.by_id
            .find(self.hasher.hash_one(uuid), |&s| {
                slots[s as usize].uuid == *uuid
            })
            .copied()
    }

    /// Every slot of item `uuid`, newest first: its latest, then the versions it
    /// superseded, back to the first.
    pub(super) fn versions_newest_first(&self, uuid: &[u8; 16]) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        let mut at = self.latest(uuid);
        while let Some(slot) = at {
            out.push(slot);
            at = self.previous.get(&slot).copied();
        }
        out
    }

    /// What to offer again once a frame that stores the items of `pending` (each with
    /// its type code and what it references) is logged: the bundles (the frame's own
    /// among them when an item of it held before waited) and the items in them that
    /// waited for this frame.
    ///
    /// A relationship, report or sighting is withheld from every partner while an
    /// object it references is not held; partners that read past its bundle's place
    /// in the feed while it waited would not see it again. So each held object that
    /// references an item of the frame (directly, or through one object between: a
    /// report, its relationship, the relationship's end) is looked at, and named here
    /// if it did not have every object it references held (to the depth the delivery
    /// rule reads, [`crate::policy::MAX_REF_DEPTH`] levels) before the frame, and does
    /// with it. Whether a partner may see it is still for the delivery rule to say.
    ///
    /// So is each held object whose latest version references an item of `released`
    /// (one whose new version in the frame, or copy by a shorter path, may reach
    /// partners the version held did not), directly or through one object that does,
    /// and has every object it references held: partners that read past it while that
    /// item held it back would not see it again either. Each is offered again at most
    /// [`MAX_RELEASES_PER_REFERENCE`] times per object released, per its version
    /// ([`Index::released_again`]).
    pub(super) fn waiting(&self, pending: &Pending, released: &HashSet<[u8; 16]>) -> Waiting {
        let mut waiting = Waiting::default();
        if self.referrers.is_empty() {
            return waiting;
        }
        let mut chosen: HashSet<[u8; 16]> = HashSet::new();
        let mut release_bundles: Vec<[u8; 16]> = Vec::new();
        for id in released {
            let by_one = self.naming(id);
            let by_two: Vec<[u8; 16]> = by_one.iter().flat_map(|by| self.naming(by)).collect();
            for by in by_one.iter().chain(&by_two) {
                let spent = self
                    .released_again
                    .get(by)
                    .and_then(|ends| ends.get(id))
                    .copied()
                    .unwrap_or(0);
                if pending.contains_key(by)
                    || spent >= MAX_RELEASES_PER_REFERENCE
                    || !chosen.insert(*by)
                {
                    continue;
                }
                let Some(held) = self.references.get(by) else {
                    continue;
                };
                if self.all_held(&held.refs, pending, 1) {
                    waiting.released.push((*by, *id));
                    release_bundles.push(held.bundle);
                }
            }
        }
        let before = Pending::new();
        let mut looked_at: HashSet<[u8; 16]> = HashSet::new();
        let mut bundles: HashSet<[u8; 16]> = HashSet::new();
        let mut consider = |uuid: &[u8; 16], waiting: &mut Waiting| {
            if !looked_at.insert(*uuid)
                || pending.contains_key(uuid)
                || self.offered_again.contains(uuid)
            {
                return;
            }
            let Some(held) = self.references.get(uuid) else {
                return;
            };
            if self.all_held(&held.refs, pending, 1) && !self.all_held(&held.refs, &before, 1) {
                if !chosen.contains(uuid) {
                    waiting.items.push(*uuid);
                }
                if bundles.insert(held.bundle) {
                    waiting.bundles.push(held.bundle);
                }
            }
        };
        // Each referrer's own referrers are looked through once.
        let mut expanded: HashSet<[u8; 16]> = HashSet::new();
        for (id, (_, refs)) in pending {
            // Only an item not held before, or one that now references other objects,
            // can change what is held for an object that references it; and only one
            // not held before for an object one level further up (which reads two
            // levels: itself, what it references, and what those reference).
            let new = self.latest(id).is_none();
            let changed = new
                || self
                    .references
                    .get(id)
                    .map_or(&[][..], |held| held.refs.as_slice())
                    != refs.as_slice();
            if !changed {
                continue;
            }
            for by in self.referrers.get(id).into_iter().flatten() {
                consider(by, &mut waiting);
                if !new || !expanded.insert(*by) {
                    continue;
                }
                for by_by in self.referrers.get(by).into_iter().flatten() {
                    consider(by_by, &mut waiting);
                }
            }
        }
        waiting
            .items
            .extend(waiting.released.iter().map(|(by, _)| *by));
        for bundle in release_bundles {
            if bundles.insert(bundle) {
                waiting.bundles.push(bundle);
            }
        }
        waiting
    }

    /// The held objects whose latest version references `id` (the index of referrers
    /// keeps what any version named).
    fn naming(&self, id: &[u8; 16]) -> Vec<[u8; 16]> {
        self.referrers
            .get(id)
            .into_iter()
            .flatten()
            .filter(|by| {
                self.references
                    .get(*by)
                    .is_some_and(|held| held.refs.iter().any(|(uuid, _)| uuid == id))
            })
            .copied()
            .collect()
    }

    /// Whether every object of `refs` is held (in `pending`, or else in the index) under
    /// its type and, to [`crate::policy::MAX_REF_DEPTH`] levels, every object each of
    /// them references.
    fn all_held(&self, refs: &[RefKey], pending: &Pending, depth: usize) -> bool {
        refs.iter().all(|(uuid, wanted)| {
            let theirs = match pending.get(uuid) {
                Some((ty, refs)) if is_referenced_type(*ty, *wanted) => refs.as_slice(),
                Some(_) => return false,
                None => match self.latest(uuid) {
                    Some(slot) if is_referenced_type(self.slots[slot as usize].ty(), *wanted) => {
                        self.references
                            .get(uuid)
                            .map_or(&[][..], |held| held.refs.as_slice())
                    }
                    _ => return false,
                },
            };
            theirs.is_empty()
                || depth >= crate::policy::MAX_REF_DEPTH
                || self.all_held(theirs, pending, depth + 1)
        })
    }

    pub(super) fn feed_head(&self) -> u64 {
        self.feed.last_key_value().map_or(0, |(seq, _)| *seq)
    }

    /// Applies one logged frame: the same code runs after an append and when the log
    /// is read at open, so both build the same index.
    pub(super) fn apply(
        &mut self,
        bundle_uuid: [u8; 16],
        feed_seq: u64,
        head: Option<Span>,
        items: Vec<NewItem>,
    ) -> Result<(), StoreError> {
        let Self {
            slots,
            by_id,
            by_value,
            observed,
            previous,
            bundles,
            referrers,
            references,
            feed,
            hasher,
            ..
        } = self;
        let entry = match bundles.entry(bundle_uuid) {
            std::collections::hash_map::Entry::Occupied(held) => held.into_mut(),
            std::collections::hash_map::Entry::Vacant(new) => {
                let head = head.ok_or_else(|| StoreError::Corrupt {
                    key: BundleId::from_uuid_bytes(bundle_uuid).to_string(),
                    problem: "the bundle's first frame has no head".into(),
                })?;
                new.insert(BundleEntry {
                    head,
                    feed_seq: 0,
                    runs: Vec::new(),
                })
            }
        };
        for new in items {
            let slot = u32::try_from(slots.len())
                .ok()
                .filter(|&s| s != NONE)
                .ok_or_else(|| StoreError::Corrupt {
                    key: "bundle log".into(),
                    problem: "more item records than this version indexes".into(),
                })?;
            slots.push(Slot::new(
                new.span,
                new.uuid,
                new.value_hash.unwrap_or(0),
                new.index,
                new.ty,
            ));
            if let Some(hash) = new.value_hash {
                let next = match by_value.entry(
                    hash,
                    |&s| slots[s as usize].value_hash == hash,
                    |&s| slots[s as usize].value_hash,
                ) {
                    hash_table::Entry::Occupied(mut head) => {
                        std::mem::replace(head.get_mut(), slot)
                    }
                    hash_table::Entry::Vacant(head) => {
                        head.insert(slot);
                        NONE
                    }
                };
                slots[slot as usize].next = next;
            }
            for hash in new.observed {
                observed.entry(hash).or_default().push(slot);
            }
            let id_hash = hasher.hash_one(new.uuid);
            let replaced = match by_id.entry(
                id_hash,
                |&s| slots[s as usize].uuid == new.uuid,
                |&s| hasher.hash_one(slots[s as usize].uuid),
            ) {
                hash_table::Entry::Occupied(mut latest) => {
                    Some(std::mem::replace(latest.get_mut(), slot))
                }
                hash_table::Entry::Vacant(latest) => {
                    latest.insert(slot);
                    None
                }
            };
            for (target, _) in &new.refs {
                referrers.entry(*target).or_default().insert(new.uuid);
            }
            if new.refs.is_empty() {
                if replaced.is_some() {
                    references.remove(&new.uuid);
                }
            } else {
                references.insert(
                    new.uuid,
                    References {
                        bundle: bundle_uuid,
                        refs: new.refs,
                    },
                );
            }
            if let Some(old) = replaced {
                slots[old as usize].retire();
                previous.insert(slot, old);
            }
            match entry.runs.last_mut() {
                Some((first, count)) if *first + *count == slot => *count += 1,
                _ => entry.runs.push((slot, 1)),
            }
        }
        if entry.feed_seq != 0 {
            feed.remove(&entry.feed_seq);
        }
        entry.feed_seq = feed_seq;
        feed.insert(feed_seq, bundle_uuid);
        Ok(())
    }
}

/// The keyed hash a value is indexed under.
pub(super) fn value_hash(hasher: &RandomState, ty: u8, value: &[u8]) -> u64 {
    hasher.hash_one((ty, value))
}

/// The keyed hashes of the values an indexed STIX pattern names (none for any other
/// item), under which a value query finds it too.
pub(super) fn observed_hashes(hasher: &RandomState, indexed: Option<(u8, &str)>) -> Vec<u64> {
    match indexed {
        Some((ty, pattern)) if ty == records::type_code(IndicatorType::StixPattern) => {
            crate::model::observables::observables(pattern)
                .values
                .iter()
                .map(|(ty, v)| value_hash(hasher, records::type_code(*ty), v.as_bytes()))
                .collect()
        }
        _ => Vec::new(),
    }
}

/// Adds one frame read at open to the index.
pub(super) fn replay(index: &mut Index, frame: Frame<'_>) -> Result<(), StoreError> {
    if frame.feed_seq <= index.feed_head() {
        return Err(StoreError::Corrupt {
            key: "bundle log".into(),
            problem: format!(
                "feed position {} after {}: positions must rise",
                frame.feed_seq,
                index.feed_head()
            ),
        });
    }
    let mut items = Vec::with_capacity(frame.items.len());
    for (span, bytes) in frame.items {
        items.push(record_item(&index.hasher, span, bytes)?);
    }
    index.apply(
        frame.bundle_uuid,
        frame.feed_seq,
        frame.head.map(|(span, _)| span),
        items,
    )
}

/// One item record read back from the log at `span`, as the index knows it.
pub(super) fn record_item(
    hasher: &RandomState,
    span: Span,
    bytes: &[u8],
) -> Result<NewItem, StoreError> {
    let damaged = |problem: String| StoreError::Corrupt {
        key: format!("item record at byte {}", span.offset),
        problem,
    };
    // No bundle holds more items than a slot can number: a larger index is damage, not
    // something to fold into the slot's bits.
    let in_bundle = |index: u32| {
        if index as usize >= crate::crypto::MAX_ITEMS_PER_BUNDLE {
            return Err(damaged(format!(
                "an item index of {index}, beyond the {} items a bundle may hold",
                crate::crypto::MAX_ITEMS_PER_BUNDLE
            )));
        }
        Ok(index)
    };
    if let Some(fields) = records::index_fields(bytes) {
        in_bundle(fields.index)?;
        return Ok(NewItem {
            span,
            uuid: fields.uuid,
            index: fields.index,
            ty: fields.ty,
            value_hash: fields.value.map(|v| value_hash(hasher, fields.ty, v)),
            observed: observed_hashes(
                hasher,
                fields
                    .value
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .map(|v| (fields.ty, v)),
            ),
            refs: Vec::new(),
        });
    }
    let record = ItemRecord::decode(bytes).map_err(|e| damaged(e.to_string()))?;
    in_bundle(record.index)?;
    let item = Item::decode_stored(&record.item_bytes).map_err(|e| damaged(e.to_string()))?;
    let (ty, value_hash) = match records::value_of(&item) {
        Some((ty, value)) => (ty, Some(value_hash(hasher, ty, value.as_bytes()))),
        None => (records::unvalued_type(&item), None),
    };
    Ok(NewItem {
        span,
        uuid: item.id.uuid_bytes(),
        index: record.index,
        ty,
        value_hash,
        observed: observed_hashes(hasher, records::value_of(&item)),
        refs: ref_keys(&item),
    })
}

/// What `item` references by structure ([`Item::refs`]), each once: the UUID and the
/// type code the item held under it must have.
pub(super) fn ref_keys(item: &Item) -> Vec<RefKey> {
    let mut refs: Vec<RefKey> = item
        .refs()
        .iter()
        .map(|id| {
            let wanted = IndicatorType::context_type(id.stix_type())
                .map_or(INDICATOR_REF, records::type_code);
            (id.uuid_bytes(), wanted)
        })
        .collect();
    refs.sort_unstable();
    refs.dedup();
    refs
}
