//! The sled implementation of [`Store`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;

use super::ledger::{self, ChainWalk, Head};
use super::records::{self, BundleRecord, ItemRecord, KnownItem};
use super::{
    AcceptReport, HeldBundle, HeldItem, ItemQuery, ItemRejection, LedgerCheck, LedgerEntry,
    LedgerRecord, Page, Source, Store, StoreError, StoredItem,
};
use crate::crypto::VerifiedBundle;
use crate::model::{BundleId, IndicatorType, Item, ItemId, NodeId, normalise};

/// Entries examined per query call at most, so one call has bounded cost.
const MAX_SCAN_PER_QUERY: usize = 200_000;

/// Largest page cursor accepted from a caller.
pub const MAX_CURSOR_BYTES: usize = 4096;

/// The sled implementation of [`Store`].
pub struct SledStore {
    path: PathBuf,
    owner: NodeId,
    db: sled::Db,
    tree: sled::Tree,
    feed_head: AtomicU64,
    /// One writer at a time: the single-writer checks read then write.
    writer: Mutex<()>,
    /// The ledger head as stored; held while appending, so appends are serial and
    /// each links to the one before without reading it back.
    ledger_head: Mutex<Head>,
}

impl SledStore {
    /// Opens (or creates) the store in `dir` for node `owner`, with a page cache of
    /// `cache_bytes`.
    pub fn open(dir: &Path, owner: &NodeId, cache_bytes: u64) -> Result<Self, StoreError> {
        let engine = |source| StoreError::Engine {
            path: dir.to_owned(),
            source,
        };
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(engine)?;
        let tree = db.open_tree(records::TREE).map_err(engine)?;
        match tree.get(records::META_OWNER).map_err(engine)? {
            Some(found) if found.as_ref() != owner.as_str().as_bytes() => {
                return Err(StoreError::WrongOwner {
                    path: dir.to_owned(),
                    expected: owner.clone(),
                    found: String::from_utf8_lossy(&found).into_owned(),
                });
            }
            Some(_) => {}
            None => {
                tree.insert(records::META_OWNER, owner.as_str().as_bytes())
                    .map_err(engine)?;
                db.flush().map_err(engine)?;
            }
        }
        let feed_head = match tree.get(records::META_FEED_HEAD).map_err(engine)? {
            Some(v) => {
                u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    key: "feed head".into(),
                    problem: "not 8 bytes".into(),
                })?)
            }
            None => 0,
        };
        let ledger_head = match tree.get(records::META_LEDGER_HEAD).map_err(engine)? {
            Some(v) => Head::decode(&v).ok_or_else(|| StoreError::Corrupt {
                key: "ledger head".into(),
                problem: format!("{} bytes, not 40", v.len()),
            })?,
            None => Head::EMPTY,
        };
        Ok(Self {
            path: dir.to_owned(),
            owner: owner.clone(),
            db,
            tree,
            feed_head: AtomicU64::new(feed_head),
            writer: Mutex::new(()),
            ledger_head: Mutex::new(ledger_head),
        })
    }

    /// The ledger head as stored now: `None` when there is none, `Some(Err(len))` when
    /// the stored value is not a head (`len` bytes).
    fn stored_ledger_head(&self) -> Result<Option<Result<Head, usize>>, StoreError> {
        Ok(self
            .tree
            .get(records::META_LEDGER_HEAD)
            .map_err(|e| self.engine(e))?
            .map(|v| Head::decode(&v).ok_or(v.len())))
    }

    fn engine(&self, source: sled::Error) -> StoreError {
        StoreError::Engine {
            path: self.path.clone(),
            source,
        }
    }

    /// The latest version held of the item `uuid`, with the key of its record.
    fn item_record(&self, uuid: &[u8; 16]) -> Result<Option<(Vec<u8>, ItemRecord)>, StoreError> {
        let Some(location) = self
            .tree
            .get(records::key(records::ITEM, uuid))
            .map_err(|e| self.engine(e))?
        else {
            return Ok(None);
        };
        let key = records::item_key(&location, uuid);
        match self.tree.get(&key).map_err(|e| self.engine(e))? {
            None => Err(corrupt_item(uuid, "the id entry points at no record")),
            Some(bytes) => ItemRecord::decode(bytes.as_ref())
                .map(|record| Some((key, record)))
                .map_err(|e| corrupt_item(uuid, e)),
        }
    }

    fn stored_item(uuid: &[u8; 16], record: ItemRecord) -> Result<StoredItem, StoreError> {
        let item = Item::decode_stored(&record.item_bytes).map_err(|e| corrupt_item(uuid, e))?;
        let bundle_uuid =
            records::uuid16(&record.bundle_uuid).ok_or_else(|| corrupt_item(uuid, "bundle id"))?;
        Ok(StoredItem {
            item,
            bundle_id: BundleId::from_uuid_bytes(bundle_uuid),
            index: record.index,
            origin: NodeId::new(&record.origin).map_err(|e| corrupt_item(uuid, e))?,
            received_from: NodeId::new(&record.received_from).map_err(|e| corrupt_item(uuid, e))?,
            hops: record.hops,
            accepted_ms: record.accepted_ms,
        })
    }
}

/// How a query walks the store: the `V` key prefixes to read, in key order.
fn plan(query: &ItemQuery) -> Vec<Vec<u8>> {
    match (&query.value, query.indicator_type) {
        (Some(value), Some(ty)) => normalise(ty, value)
            .map(|v| vec![records::value_prefix(ty, &v)])
            .unwrap_or_default(),
        (Some(value), None) => {
            let mut prefixes: Vec<Vec<u8>> = IndicatorType::ALL
                .into_iter()
                .filter_map(|ty| {
                    normalise(ty, value)
                        .ok()
                        .map(|v| records::value_prefix(ty, &v))
                })
                .collect();
            prefixes.sort();
            prefixes
        }
        (None, Some(ty)) => vec![vec![records::VALUE, records::type_code(ty)]],
        (None, None) => vec![vec![records::VALUE]],
    }
}

fn damaged_head(len: usize) -> LedgerCheck {
    LedgerCheck::Broken {
        seq: 0,
        problem: format!("the ledger head is damaged ({len} bytes, not 40)"),
    }
}

fn corrupt_item(uuid: &[u8; 16], problem: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: ItemId::from_uuid_bytes(*uuid).to_string(),
        problem: problem.to_string(),
    }
}

impl Store for SledStore {
    fn owner(&self) -> &NodeId {
        &self.owner
    }

    fn accept(
        &self,
        bundle: &VerifiedBundle,
        source: &Source,
        now_ms: i64,
    ) -> Result<AcceptReport, StoreError> {
        let header = bundle.header();
        let bundle_uuid = header.bundle_id.uuid_bytes();
        let bundle_key = records::key(records::BUNDLE, &bundle_uuid);
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());

        let mut record = match self.tree.get(&bundle_key).map_err(|e| self.engine(e))? {
            Some(bytes) => {
                let record =
                    BundleRecord::decode(bytes.as_ref()).map_err(|e| StoreError::Corrupt {
                        key: header.bundle_id.to_string(),
                        problem: e.to_string(),
                    })?;
                // The same signed header under another valid signature (ECDSA signatures
                // are malleable) is the same bundle: the first signature is kept.
                if record.header_bytes != bundle.header_bytes() {
                    return Err(StoreError::ConflictingBundle(header.bundle_id.clone()));
                }
                record
            }
            None => BundleRecord {
                header_bytes: bundle.header_bytes().to_vec(),
                signature: bundle.signature().to_vec(),
                known: Vec::new(),
                feed_seq: 0,
                accepted_ms: now_ms,
            },
        };
        let known: HashSet<u32> = record.known.iter().map(|k| k.index).collect();
        let origin = header.origin.to_string();
        let received_from = source.received_from.to_string();

        let mut report = AcceptReport::default();
        let mut batch = sled::Batch::default();
        // Item versions written by this batch, so items of one bundle see each other:
        // modified time and the key of the record written.
        let mut pending: HashMap<[u8; 16], (i64, Vec<u8>)> = HashMap::new();
        for verified in bundle.items() {
            let item = &verified.item;
            let uuid = item.id.uuid_bytes();
            if known.contains(&verified.index) {
                // Held already; a shorter path lowers its hop count (DESIGN 6.1).
                match self.item_record(&uuid)? {
                    Some((key, mut current))
                        if current.bundle_uuid == bundle_uuid
                            && current.index == verified.index
                            && source.hops < current.hops =>
                    {
                        current.hops = source.hops;
                        current.received_from = received_from.clone();
                        batch.insert(key, current.encode_to_vec());
                        report.hops_lowered += 1;
                    }
                    _ => report.duplicates += 1,
                }
                continue;
            }
            // The version held: modified time, record key and origin.
            let held = match pending.get(&uuid) {
                Some((modified, key)) => Some((*modified, key.clone(), None)),
                None => self
                    .item_record(&uuid)?
                    .map(|(key, current)| (current.modified_ms, key, Some(current.origin))),
            };
            if let Some((modified, old_key, holder)) = held {
                if let Some(holder) = holder.filter(|h| *h != origin) {
                    report.rejected.push((
                        verified.index,
                        ItemRejection::NotOriginWriter {
                            holder: NodeId::new(&holder).map_err(|e| corrupt_item(&uuid, e))?,
                        },
                    ));
                    continue;
                }
                if item.modified_ms <= modified {
                    report.duplicates += 1;
                    continue;
                }
                // The older version goes (the newer one may be under another value).
                batch.remove(old_key);
            }
            let location = records::location_of(item);
            let key = records::item_key(&location, &uuid);
            let item_record = ItemRecord {
                bundle_uuid: bundle_uuid.to_vec(),
                index: verified.index,
                salt: verified.salt.to_vec(),
                item_bytes: verified.item_bytes.clone(),
                modified_ms: item.modified_ms,
                origin: origin.clone(),
                received_from: received_from.clone(),
                hops: source.hops,
                accepted_ms: now_ms,
            };
            batch.insert(records::key(records::ITEM, &uuid), location);
            batch.insert(key.clone(), item_record.encode_to_vec());
            pending.insert(uuid, (item.modified_ms, key));
            record.known.push(KnownItem {
                index: verified.index,
                item_uuid: uuid.to_vec(),
                modified_ms: item.modified_ms,
            });
            report.stored.push(verified.index);
        }

        if report.stored.is_empty() && report.hops_lowered == 0 {
            return Ok(report);
        }
        record.known.sort_by_key(|k| k.index);
        let seq = self.feed_head.load(Ordering::SeqCst) + 1;
        if record.feed_seq != 0 {
            // The bundle moves to the head of the feed with everything now known.
            batch.remove(&records::feed_key(record.feed_seq)[..]);
        }
        record.feed_seq = seq;
        batch.insert(&records::feed_key(seq)[..], &bundle_uuid[..]);
        batch.insert(records::META_FEED_HEAD, &seq.to_be_bytes()[..]);
        batch.insert(bundle_key, record.encode_to_vec());
        self.tree.apply_batch(batch).map_err(|e| self.engine(e))?;
        self.feed_head.store(seq, Ordering::SeqCst);
        report.feed_seq = Some(seq);
        Ok(report)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.engine(e))
    }

    fn get(&self, id: &ItemId) -> Result<Option<StoredItem>, StoreError> {
        let uuid = id.uuid_bytes();
        match self.item_record(&uuid)? {
            None => Ok(None),
            Some((_, record)) => Self::stored_item(&uuid, record).map(Some),
        }
    }

    fn query(
        &self,
        query: &ItemQuery,
        after: Option<&[u8]>,
        limit: usize,
        now_ms: i64,
        visible: &dyn Fn(&StoredItem) -> bool,
    ) -> Result<Page, StoreError> {
        let mut page = Page::default();
        if limit == 0 {
            return Ok(page);
        }
        let after = after.filter(|a| !a.is_empty());
        let mut scanned = 0usize;
        for prefix in plan(query) {
            // Resume strictly after the cursor (the last key read), within this prefix.
            let start = match after {
                Some(a) if a >= prefix.as_slice() => {
                    let mut s = a.to_vec();
                    s.push(0);
                    s
                }
                _ => prefix.clone(),
            };
            for entry in self.tree.range(start..) {
                let (key, value) = entry.map_err(|e| self.engine(e))?;
                if !key.starts_with(&prefix) {
                    break;
                }
                scanned += 1;
                let Some(uuid) = records::uuid_of_item_key(&key) else {
                    return Err(StoreError::Corrupt {
                        key: format!("item key {:02x?}", &key[..]),
                        problem: "not an item key".into(),
                    });
                };
                let record =
                    ItemRecord::decode(value.as_ref()).map_err(|e| corrupt_item(&uuid, e))?;
                let stored = Self::stored_item(&uuid, record)?;
                if query.matches(&stored, now_ms) && visible(&stored) {
                    page.items.push(stored);
                }
                if page.items.len() >= limit || scanned >= MAX_SCAN_PER_QUERY {
                    page.next = Some(key.to_vec());
                    return Ok(page);
                }
            }
        }
        Ok(page)
    }

    fn feed_head(&self) -> u64 {
        self.feed_head.load(Ordering::SeqCst)
    }

    fn put_certificate(&self, der: &[u8]) -> Result<[u8; 32], StoreError> {
        let sha = crate::crypto::sha256(der);
        self.tree
            .insert(records::key(records::CERT, &sha), der)
            .map_err(|e| self.engine(e))?;
        Ok(sha)
    }

    fn certificate(&self, sha256: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(records::key(records::CERT, sha256))
            .map_err(|e| self.engine(e))?
            .map(|v| v.to_vec()))
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(|e| self.engine(e))
    }

    fn feed(&self, after: u64, limit: usize) -> Result<Vec<(u64, BundleId)>, StoreError> {
        let mut out = Vec::new();
        let Some(first) = after.checked_add(1) else {
            return Ok(out);
        };
        for entry in self
            .tree
            .range(records::feed_key(first)..=records::feed_key(u64::MAX))
        {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry.map_err(|e| self.engine(e))?;
            let seq = key
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError::Corrupt {
                    key: "feed".into(),
                    problem: "bad feed key".into(),
                })?;
            let uuid = records::uuid16(&value).ok_or_else(|| StoreError::Corrupt {
                key: format!("feed {seq}"),
                problem: "bad bundle id".into(),
            })?;
            out.push((seq, BundleId::from_uuid_bytes(uuid)));
        }
        Ok(out)
    }

    fn held_bundle(&self, id: &BundleId) -> Result<Option<HeldBundle>, StoreError> {
        let bundle_uuid = id.uuid_bytes();
        let key = records::key(records::BUNDLE, &bundle_uuid);
        let Some(bytes) = self.tree.get(key).map_err(|e| self.engine(e))? else {
            return Ok(None);
        };
        let record = BundleRecord::decode(bytes.as_ref()).map_err(|e| StoreError::Corrupt {
            key: id.to_string(),
            problem: e.to_string(),
        })?;
        let mut items = Vec::with_capacity(record.known.len());
        for known in &record.known {
            let Some(uuid) = records::uuid16(&known.item_uuid) else {
                continue;
            };
            let Some((_, item)) = self.item_record(&uuid)? else {
                continue;
            };
            // Only the latest version of an id is ever passed on.
            if item.bundle_uuid != bundle_uuid || item.index != known.index {
                continue;
            }
            let salt = item.salt.clone();
            let item_bytes = item.item_bytes.clone();
            let stored = Self::stored_item(&uuid, item)?;
            items.push(HeldItem {
                index: known.index,
                salt,
                item_bytes,
                stored,
            });
        }
        Ok(Some(HeldBundle {
            header_bytes: record.header_bytes,
            signature: record.signature,
            items,
        }))
    }

    fn served_policy(&self, peer: &NodeId) -> Result<Option<[u8; 32]>, StoreError> {
        let key = records::key(records::SERVED, peer.as_str().as_bytes());
        Ok(self
            .tree
            .get(key)
            .map_err(|e| self.engine(e))?
            .and_then(|v| v.as_ref().try_into().ok()))
    }

    fn set_served_policy(&self, peer: &NodeId, fingerprint: &[u8; 32]) -> Result<(), StoreError> {
        let key = records::key(records::SERVED, peer.as_str().as_bytes());
        self.tree
            .insert(key, &fingerprint[..])
            .map_err(|e| self.engine(e))?;
        Ok(())
    }

    fn cursor(&self, peer: &NodeId) -> Result<u64, StoreError> {
        let key = records::key(records::CURSOR, peer.as_str().as_bytes());
        Ok(self
            .tree
            .get(key)
            .map_err(|e| self.engine(e))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    fn set_cursor(&self, peer: &NodeId, seq: u64) -> Result<(), StoreError> {
        let key = records::key(records::CURSOR, peer.as_str().as_bytes());
        self.tree
            .insert(key, &seq.to_be_bytes()[..])
            .map_err(|e| self.engine(e))?;
        Ok(())
    }

    fn bundle_header(&self, id: &BundleId) -> Result<Option<Vec<u8>>, StoreError> {
        let key = records::key(records::BUNDLE, &id.uuid_bytes());
        match self.tree.get(key).map_err(|e| self.engine(e))? {
            None => Ok(None),
            Some(bytes) => BundleRecord::decode(bytes.as_ref())
                .map(|r| Some(r.header_bytes))
                .map_err(|e| StoreError::Corrupt {
                    key: id.to_string(),
                    problem: e.to_string(),
                }),
        }
    }

    fn append_ledger_many(&self, entries: &[LedgerEntry]) -> Result<Vec<LedgerRecord>, StoreError> {
        let mut head = self.ledger_head.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let mut out = Vec::with_capacity(entries.len());
        let mut last = *head;
        for entry in entries {
            let seq = last.seq.checked_add(1).ok_or_else(|| StoreError::Corrupt {
                key: "ledger head".into(),
                problem: "sequence number exhausted".into(),
            })?;
            let stored = ledger::encode_record(seq, entry, &last.hash);
            let next = Head {
                seq,
                hash: ledger::link_hash(&stored),
            };
            batch.insert(&records::ledger_key(seq)[..], stored);
            out.push(LedgerRecord {
                seq,
                entry: entry.clone(),
                prev_hash: last.hash,
                hash: next.hash,
            });
            last = next;
        }
        if out.is_empty() {
            return Ok(out);
        }
        batch.insert(records::META_LEDGER_HEAD, &last.encode()[..]);
        self.tree.apply_batch(batch).map_err(|e| self.engine(e))?;
        *head = last;
        Ok(out)
    }

    fn append_ledger(&self, entry: &LedgerEntry) -> Result<LedgerRecord, StoreError> {
        let mut head = self.ledger_head.lock().unwrap_or_else(|p| p.into_inner());
        let seq = head.seq.checked_add(1).ok_or_else(|| StoreError::Corrupt {
            key: "ledger head".into(),
            problem: "sequence number exhausted".into(),
        })?;
        let stored = ledger::encode_record(seq, entry, &head.hash);
        let next = Head {
            seq,
            hash: ledger::link_hash(&stored),
        };
        let mut batch = sled::Batch::default();
        batch.insert(&records::ledger_key(seq)[..], stored);
        batch.insert(records::META_LEDGER_HEAD, &next.encode()[..]);
        self.tree.apply_batch(batch).map_err(|e| self.engine(e))?;
        let prev = std::mem::replace(&mut *head, next);
        Ok(LedgerRecord {
            seq,
            entry: entry.clone(),
            prev_hash: prev.hash,
            hash: next.hash,
        })
    }

    fn ledger(
        &self,
        after: u64,
        limit: usize,
        partner: Option<&NodeId>,
        since_ms: Option<i64>,
    ) -> Result<Vec<LedgerRecord>, StoreError> {
        let mut out = Vec::new();
        let Some(first) = after.checked_add(1) else {
            return Ok(out);
        };
        if limit == 0 {
            return Ok(out);
        }
        let end = records::ledger_key(u64::MAX);
        for entry in self.tree.range(records::ledger_key(first)..=end) {
            let (key, stored) = entry.map_err(|e| self.engine(e))?;
            let Some(seq) = records::ledger_seq(&key) else {
                return Err(StoreError::Corrupt {
                    key: format!("ledger key {:02x?}", &key[..]),
                    problem: "not a ledger record key".into(),
                });
            };
            let damaged = |problem: String| StoreError::Corrupt {
                key: format!("ledger record {seq}"),
                problem,
            };
            if let Some(record) = ledger::decode_if(&stored, partner, since_ms).map_err(damaged)? {
                if record.seq != seq {
                    return Err(damaged(format!(
                        "stored at {seq} but numbered {}",
                        record.seq
                    )));
                }
                out.push(record);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn verify_ledger(&self) -> Result<LedgerCheck, StoreError> {
        // Every record up to this head is visible: a record and the head that counts
        // it are one batch.
        let head = match self.stored_ledger_head()? {
            None => None,
            Some(Ok(head)) => Some(head),
            Some(Err(len)) => return Ok(damaged_head(len)),
        };
        let last = head.map_or(0, |h| h.seq);
        let mut walk = ChainWalk::new();
        let mut beyond = false;
        for entry in self.tree.scan_prefix([records::LEDGER]) {
            let (key, stored) = entry.map_err(|e| self.engine(e))?;
            let Some(seq) = records::ledger_seq(&key) else {
                return Ok(LedgerCheck::Broken {
                    seq: 0,
                    problem: format!(
                        "an entry that is not a record lies in the ledger (key {key:02x?})"
                    ),
                });
            };
            if seq > last {
                beyond = true;
                break;
            }
            if let Err(broken) = walk.step(seq, &stored) {
                return Ok(broken.into());
            }
        }
        let check = walk.finish(head);
        if !beyond || matches!(check, LedgerCheck::Broken { .. }) {
            return Ok(check);
        }
        // Records past the head seen at the start: appended since (fine), or there
        // without a head that counts them. Appends are held off while looking.
        let _appends = self.ledger_head.lock().unwrap_or_else(|p| p.into_inner());
        let now = match self.stored_ledger_head()? {
            None => None,
            Some(Ok(now)) => Some(now),
            Some(Err(len)) => return Ok(damaged_head(len)),
        };
        let from = records::ledger_key(now.map_or(0, |h| h.seq).saturating_add(1));
        let end = records::ledger_key(u64::MAX);
        match self.tree.range(from..=end).next() {
            None => Ok(check),
            Some(entry) => {
                let (key, _) = entry.map_err(|e| self.engine(e))?;
                let first_extra = records::ledger_seq(&key).unwrap_or(0);
                Ok(ledger::beyond_head(first_extra, now))
            }
        }
    }
}
