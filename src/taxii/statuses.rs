//! The status resources of TAXII writes, kept per writer: in memory (up to
//! [`WRITER_BYTES`] each, a writer's oldest dropped first) and in the store, in
//! [`SLOTS_PER_WRITER`] slots of each writer's own, so that they outlive a restart. One
//! writer's writes never drop or replace another writer's statuses; only when more than
//! [`MAX_WRITERS`] writers hold statuses is the writer whose newest status is oldest
//! dropped whole. A status is readable by its writer only, for [`LIFETIME_MS`]; anyone
//! else's, an expired one and one never written are the same 404.
//!
//! In the store a status is named `{writer}/{slot}`, where the slot is the writer's own
//! sequence number modulo [`SLOTS_PER_WRITER`]. Records of the former scheme (one ring
//! of [`LEGACY_SLOTS`] slots named `{slot}`, shared by all writers, record version 1) are
//! moved to their writers' slots when the statuses are loaded, then removed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use hyper::body::Bytes;

use crate::model::NodeId;
use crate::store::Store;

/// Bytes of status resources kept in memory for one writer; its oldest go first.
pub const WRITER_BYTES: usize = 16 * 1024 * 1024;
/// Bytes of status resources kept in memory for all writers together: past it, the
/// writer holding the most loses its oldest, so a writer within its share (this over
/// the number of writers) loses nothing to the others.
pub const MEMORY_BYTES: usize = 64 * 1024 * 1024;
/// Writers whose statuses are kept at once; past it, the writer whose newest status is
/// oldest is dropped (in memory and in the store).
pub const MAX_WRITERS: usize = 64;
/// Status slots in the store per writer: a writer's last this many writes' statuses
/// outlive a restart.
pub const SLOTS_PER_WRITER: u64 = 16;
/// Largest status kept in the store (a larger one is kept in memory only); with
/// [`SLOTS_PER_WRITER`] and [`MAX_WRITERS`], the store holds at most 1 GiB of statuses,
/// 16 MiB per writer.
pub const MAX_STORED_BYTES: usize = 1024 * 1024;
/// How long a status stays readable: 24 hours.
pub const LIFETIME_MS: i64 = 24 * 60 * 60 * 1000;
/// Slots of the former scheme, shared by all writers: read once, moved, removed.
const LEGACY_SLOTS: u64 = 64;
/// Format of a stored status record: its `seq` counts its writer's writes.
const RECORD_VERSION: u8 = 2;
/// Format of a record of the former scheme: its `seq` counts all writes.
const LEGACY_RECORD_VERSION: u8 = 1;
/// Records read from the store at most when loading: those the bounds allow, the former
/// ring, and room for records left by a crash between a write and a removal.
const MAX_LOADED_RECORDS: usize =
    MAX_WRITERS * SLOTS_PER_WRITER as usize * 2 + LEGACY_SLOTS as usize;

/// One status resource.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Status {
    seq: u64,
    id: String,
    owner: NodeId,
    at_ms: i64,
    body: Bytes,
}

impl Status {
    /// `version | seq | at_ms | id length | id | owner length | owner | body`.
    fn encode(&self) -> Vec<u8> {
        self.encode_as(RECORD_VERSION)
    }

    fn encode_as(&self, version: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.id.len() + self.body.len());
        out.push(version);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        for text in [self.id.as_str(), self.owner.as_str()] {
            out.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(&text.as_bytes()[..text.len().min(255)]);
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// A record of either version, with its version.
    fn decode(bytes: &[u8]) -> Option<(u8, Self)> {
        if bytes.len() > MAX_STORED_BYTES + 1024 {
            return None;
        }
        let (&version, rest) = bytes.split_first()?;
        if !(version == RECORD_VERSION || version == LEGACY_RECORD_VERSION) || rest.len() < 16 {
            return None;
        }
        let (seq, rest) = rest.split_at(8);
        let (at, rest) = rest.split_at(8);
        let mut rest = rest;
        let mut texts = Vec::with_capacity(2);
        for _ in 0..2 {
            let (&len, tail) = rest.split_first()?;
            let len = usize::from(len);
            if tail.len() < len {
                return None;
            }
            let (text, tail) = tail.split_at(len);
            texts.push(std::str::from_utf8(text).ok()?.to_owned());
            rest = tail;
        }
        let owner = NodeId::new(&texts[1]).ok()?;
        let status = Self {
            seq: u64::from_be_bytes(seq.try_into().ok()?),
            id: texts.swap_remove(0),
            owner,
            at_ms: i64::from_be_bytes(at.try_into().ok()?),
            body: Bytes::copy_from_slice(rest),
        };
        Some((version, status))
    }

    fn live(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.at_ms) < LIFETIME_MS
            && self.at_ms <= now_ms.saturating_add(LIFETIME_MS)
    }

    /// Its name in the store.
    fn name(&self) -> String {
        slot_name(&self.owner, self.seq % SLOTS_PER_WRITER)
    }
}

/// The name of `owner`'s slot `slot` in the store.
fn slot_name(owner: &NodeId, slot: u64) -> String {
    format!("{owner}/{slot}")
}

/// What a name in the store stands for.
#[derive(Debug, PartialEq, Eq)]
enum Name {
    /// A writer's slot.
    Writer(NodeId, u64),
    /// A slot of the former shared ring.
    Legacy(u64),
}

impl Name {
    /// The name as written, or `None` for any other (non-canonical numbers included).
    fn parse(name: &str) -> Option<Self> {
        fn slot(text: &str, below: u64) -> Option<u64> {
            if text.is_empty()
                || text.len() > 3
                || !text.bytes().all(|b| b.is_ascii_digit())
                || (text.len() > 1 && text.starts_with('0'))
            {
                return None;
            }
            text.parse().ok().filter(|n| *n < below)
        }
        match name.split_once('/') {
            Some((owner, rest)) => Some(Self::Writer(
                NodeId::new(owner).ok()?,
                slot(rest, SLOTS_PER_WRITER)?,
            )),
            None => Some(Self::Legacy(slot(name, LEGACY_SLOTS)?)),
        }
    }
}

/// The statuses of one writer, oldest first.
#[derive(Default)]
struct Writer {
    entries: VecDeque<Status>,
    bytes: usize,
    /// The writer's next write's sequence number; its slot is `seq % SLOTS_PER_WRITER`.
    seq: u64,
}

impl Writer {
    /// Keeps `status`, dropping the oldest beyond [`WRITER_BYTES`] and the expired.
    fn push(&mut self, status: Status, now_ms: i64) {
        self.bytes += status.body.len();
        self.entries.push_back(status);
        while self.bytes > WRITER_BYTES || self.entries.front().is_some_and(|s| !s.live(now_ms)) {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= old.body.len(),
                None => break,
            }
        }
    }

    /// When its newest status was written (`i64::MIN` when it holds none).
    fn newest_ms(&self) -> i64 {
        self.entries.back().map_or(i64::MIN, |s| s.at_ms)
    }
}

/// Drops the oldest statuses of the writer holding the most bytes until all writers
/// together hold at most [`MEMORY_BYTES`].
fn trim_to_memory(writers: &mut HashMap<NodeId, Writer>) {
    let mut total: usize = writers.values().map(|w| w.bytes).sum();
    while total > MEMORY_BYTES {
        let Some(largest) = writers
            .values_mut()
            .filter(|w| !w.entries.is_empty())
            .max_by_key(|w| w.bytes)
        else {
            break;
        };
        match largest.entries.pop_front() {
            Some(old) => {
                largest.bytes -= old.body.len();
                total -= old.body.len();
            }
            None => break,
        }
    }
}

/// The writer to drop to make room: the one whose newest status is oldest (by id when
/// alike, so the choice does not depend on the map's order).
fn writer_to_drop(writers: &HashMap<NodeId, Writer>) -> Option<NodeId> {
    writers
        .iter()
        .min_by(|(a, wa), (b, wb)| wa.newest_ms().cmp(&wb.newest_ms()).then_with(|| a.cmp(b)))
        .map(|(id, _)| id.clone())
}

/// Removes all of `owner`'s slots from the store; false when one could not be removed.
fn remove_slots(store: &dyn Store, owner: &NodeId) -> bool {
    let mut removed = true;
    for slot in 0..SLOTS_PER_WRITER {
        removed &= store.remove_taxii_status(&slot_name(owner, slot)).is_ok();
    }
    removed
}

/// The status resources of one listener.
pub struct Statuses {
    store: Arc<dyn Store>,
    writers: Mutex<HashMap<NodeId, Writer>>,
    /// Held while the store is written, taken before `writers`.
    store_writes: Mutex<()>,
}

impl Statuses {
    /// The statuses kept in `store` that are still readable at `now_ms`. Records of the
    /// former shared ring are moved to their writers' slots; records that do not decode,
    /// are misnamed or have expired are removed.
    pub fn load(store: Arc<dyn Store>, now_ms: i64) -> Self {
        let records = match store.taxii_statuses(MAX_LOADED_RECORDS) {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(%error, "the kept TAXII statuses could not be read");
                Vec::new()
            }
        };
        if records.len() >= MAX_LOADED_RECORDS {
            tracing::warn!(
                records = records.len(),
                "more TAXII status records are kept than the bounds allow; the rest are passed over"
            );
        }
        let mut kept: HashMap<NodeId, Vec<Status>> = HashMap::new();
        let mut legacy = Vec::new();
        let mut stale = Vec::new();
        let mut undecodable = 0usize;
        for (name, bytes) in records {
            match (Name::parse(&name), Status::decode(&bytes)) {
                (Some(Name::Writer(owner, slot)), Some((RECORD_VERSION, status)))
                    if status.owner == owner && status.seq % SLOTS_PER_WRITER == slot =>
                {
                    if status.live(now_ms) {
                        kept.entry(owner).or_default().push(status);
                    } else {
                        stale.push(name);
                    }
                }
                (Some(Name::Legacy(_)), Some((LEGACY_RECORD_VERSION, status))) => {
                    if status.live(now_ms) {
                        legacy.push(status);
                    }
                    stale.push(name);
                }
                _ => {
                    undecodable += 1;
                    stale.push(name);
                }
            }
        }
        if undecodable > 0 {
            tracing::warn!(
                undecodable,
                "kept TAXII statuses do not decode or are misnamed; removed"
            );
        }
        // A writer's statuses in the order written, then those of the former ring (in
        // the order they were written) given the writer's next sequence numbers.
        for statuses in kept.values_mut() {
            statuses.sort_by_key(|s| s.seq);
        }
        legacy.sort_by_key(|s| s.seq);
        let mut moved = Vec::new();
        for mut status in legacy {
            let statuses = kept.entry(status.owner.clone()).or_default();
            status.seq = statuses.last().map_or(0, |s| s.seq.saturating_add(1));
            moved.push(status.clone());
            statuses.push(status);
        }
        // At most MAX_WRITERS writers: those whose newest status is newest.
        let mut by_newest: Vec<(NodeId, Vec<Status>)> = kept.into_iter().collect();
        by_newest.sort_by(|(a, sa), (b, sb)| {
            let newest = |s: &[Status]| s.iter().map(|s| s.at_ms).max().unwrap_or(i64::MIN);
            newest(sb).cmp(&newest(sa)).then_with(|| a.cmp(b))
        });
        let mut dropped = Vec::new();
        if by_newest.len() > MAX_WRITERS {
            dropped = by_newest.split_off(MAX_WRITERS);
            tracing::warn!(
                writers = dropped.len(),
                "more writers hold TAXII statuses than are kept; those longest without a write are dropped"
            );
        }
        let mut failed = false;
        for status in &moved {
            if by_newest.iter().any(|(owner, _)| owner == &status.owner) {
                failed |= store
                    .set_taxii_status(&status.name(), &status.encode())
                    .is_err();
            }
        }
        if !moved.is_empty() {
            tracing::info!(
                statuses = moved.len(),
                "TAXII statuses kept in the former shared ring moved to their writers' slots"
            );
        }
        for name in &stale {
            failed |= store.remove_taxii_status(name).is_err();
        }
        for (owner, _) in &dropped {
            failed |= !remove_slots(store.as_ref(), owner);
        }
        if failed {
            tracing::warn!("the kept TAXII statuses could not all be rewritten in the store");
        }
        let mut writers = HashMap::with_capacity(by_newest.len());
        for (owner, statuses) in by_newest {
            let mut writer = Writer {
                seq: statuses.last().map_or(0, |s| s.seq.saturating_add(1)),
                ..Writer::default()
            };
            for status in statuses {
                writer.push(status, now_ms);
            }
            writers.insert(owner, writer);
        }
        trim_to_memory(&mut writers);
        Self {
            store,
            writers: Mutex::new(writers),
            store_writes: Mutex::new(()),
        }
    }

    /// Keeps the status `id` of a write by `owner`: in memory, and in the store when it
    /// is at most [`MAX_STORED_BYTES`] (durable when this returns), in a slot of the
    /// owner's own. From a blocking thread.
    pub fn keep(&self, id: &str, owner: &NodeId, body: Bytes, now_ms: i64) {
        // The store is written in the order decided here, under `store_writes`, so a
        // slot's last record is its writer's last status in it, and a dropped writer's
        // slots are not written again after their removal. The map's lock is not held
        // while the disk is written (a file synced), so reads of statuses never wait.
        let _store_writes = self.store_writes.lock().unwrap_or_else(|p| p.into_inner());
        let (dropped, name, record) = {
            let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
            let mut dropped = None;
            if !writers.contains_key(owner) && writers.len() >= MAX_WRITERS {
                if let Some(writer) = writer_to_drop(&writers) {
                    writers.remove(&writer);
                    tracing::warn!(
                        writer = %writer,
                        "TAXII statuses are kept for {MAX_WRITERS} writers; the one longest without a write is dropped"
                    );
                    dropped = Some(writer);
                }
            }
            let writer = writers.entry(owner.clone()).or_default();
            let status = Status {
                seq: writer.seq,
                id: id.to_owned(),
                owner: owner.clone(),
                at_ms: now_ms,
                body,
            };
            writer.seq = writer.seq.saturating_add(1);
            let name = status.name();
            let record = (status.body.len() <= MAX_STORED_BYTES).then(|| status.encode());
            writer.push(status, now_ms);
            trim_to_memory(&mut writers);
            (dropped, name, record)
        };
        if let Some(dropped) = dropped
            && !remove_slots(self.store.as_ref(), &dropped)
        {
            tracing::warn!(writer = %dropped, "a dropped writer's TAXII statuses could not be removed from the store");
        }
        let stored = match record {
            Some(record) => self.store.set_taxii_status(&name, &record),
            // The slot's older status would come back after a restart in its place.
            None => self.store.remove_taxii_status(&name),
        };
        if let Err(error) = stored {
            tracing::warn!(%error, "a TAXII status could not be kept in the store; it is kept in memory");
        }
    }

    /// The status `id` if `caller` wrote it and it is still readable.
    pub fn get(&self, id: &str, caller: &NodeId, now_ms: i64) -> Option<Bytes> {
        let writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        writers
            .get(caller)?
            .entries
            .iter()
            .rev()
            .find(|s| s.id == id && s.live(now_ms))
            .map(|s| s.body.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_memory_bound_the_writer_holding_most_loses_its_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let statuses = Statuses::load(open_store(dir.path()), 0);
        let big = Bytes::from(vec![b' '; 2 * MAX_STORED_BYTES]);
        let small = Bytes::from(vec![b' '; MAX_STORED_BYTES / 2]);
        // Five writers within their share, then one that writes far past it.
        for n in 1..=5 {
            for k in 0..8 {
                statuses.keep(&format!("s{k}"), &writer(n), small.clone(), 1);
            }
        }
        for n in 10..16 {
            for k in 0..20 {
                statuses.keep(&format!("b{k}"), &writer(n), big.clone(), 1);
            }
        }
        for n in 1..=5 {
            for k in 0..8 {
                assert!(
                    statuses.get(&format!("s{k}"), &writer(n), 2).is_some(),
                    "{n} {k}"
                );
            }
        }
        let held: usize = {
            let writers = statuses.writers.lock().unwrap();
            writers.values().map(|w| w.bytes).sum()
        };
        assert!(held <= MEMORY_BYTES, "{held}");
        assert!(statuses.get("b19", &writer(10), 2).is_some());
        assert_eq!(statuses.get("b0", &writer(10), 2), None);
    }

    fn writer(n: usize) -> NodeId {
        NodeId::new(&format!("writer-{n}.soc")).unwrap()
    }

    #[test]
    fn records_round_trip_and_expire() {
        let status = Status {
            seq: 70,
            id: "0b1c2d3e-0000-4000-8000-000000000001".into(),
            owner: NodeId::new("analyst.soc").unwrap(),
            at_ms: 1_000,
            body: Bytes::from_static(b"{\"status\":\"complete\"}"),
        };
        let encoded = status.encode();
        assert_eq!(
            Status::decode(&encoded),
            Some((RECORD_VERSION, status.clone()))
        );
        for cut in 0..encoded.len() - status.body.len() {
            assert_eq!(Status::decode(&encoded[..cut]), None, "{cut}");
        }
        assert!(status.live(1_000 + LIFETIME_MS - 1));
        assert!(!status.live(1_000 + LIFETIME_MS));
    }

    /// Opens the store in `dir`, waiting (up to 5 s) while sled's threads of a store
    /// just dropped there still hold its lock.
    fn open_store(dir: &std::path::Path) -> Arc<dyn Store> {
        let owner = NodeId::new("redmond.hq").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match crate::store::SledStore::open(dir, &owner, 8 * 1024 * 1024) {
                Err(crate::store::StoreError::Engine { .. })
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                opened => return Arc::new(opened.unwrap()),
            }
        }
    }

    #[test]
    fn one_writers_statuses_never_push_out_anothers() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_000_000;
        let a = NodeId::new("analyst.a").unwrap();
        let b = NodeId::new("analyst.b").unwrap();
        let body = Bytes::from(vec![b'x'; 256 * 1024]);
        {
            let statuses = Statuses::load(open_store(dir.path()), now);
            statuses.keep("b-1", &b, Bytes::from_static(b"{\"b\":1}"), now);
            // A writes more than a writer's memory bound (20 MiB) and more writes than
            // the store has slots, per writer or in all.
            for n in 0..80 {
                statuses.keep(&format!("a-{n}"), &a, body.clone(), now + 1 + n);
            }
            let later = now + 100;
            assert_eq!(
                statuses.get("b-1", &b, later).as_deref(),
                Some(&b"{\"b\":1}"[..])
            );
            assert_eq!(statuses.get("b-1", &a, later), None);
            assert!(statuses.get("a-79", &a, later).is_some());
            assert_eq!(statuses.get("a-79", &b, later), None);
        }
        let statuses = Statuses::load(open_store(dir.path()), now + 200);
        assert_eq!(
            statuses.get("b-1", &b, now + 200).as_deref(),
            Some(&b"{\"b\":1}"[..])
        );
        assert!(statuses.get("a-79", &a, now + 200).is_some());
        assert_eq!(statuses.get("b-1", &b, now + LIFETIME_MS), None);
    }

    #[test]
    fn a_writer_keeps_its_last_slots_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeId::new("analyst.a").unwrap();
        {
            let statuses = Statuses::load(open_store(dir.path()), 0);
            for n in 0..40 {
                statuses.keep(&format!("a-{n}"), &a, Bytes::from_static(b"{}"), n);
            }
            // Larger than the store takes: kept in memory, its slot emptied.
            statuses.keep("big", &a, Bytes::from(vec![b'x'; MAX_STORED_BYTES + 1]), 40);
            assert!(statuses.get("big", &a, 41).is_some());
        }
        let store = open_store(dir.path());
        assert_eq!(store.taxii_statuses(1000).unwrap().len(), 15);
        let statuses = Statuses::load(store, 50);
        assert_eq!(statuses.get("big", &a, 50), None);
        assert!(statuses.get("a-39", &a, 50).is_some());
        assert!(statuses.get("a-25", &a, 50).is_some());
        assert_eq!(statuses.get("a-24", &a, 50), None);
        // The next write goes on from the last sequence number kept.
        statuses.keep("next", &a, Bytes::from_static(b"{}"), 60);
        drop(statuses);
        let store = open_store(dir.path());
        assert_eq!(store.taxii_statuses(1000).unwrap().len(), 16);
    }

    #[test]
    fn records_of_the_shared_ring_move_to_their_writers() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeId::new("analyst.a").unwrap();
        let b = NodeId::new("analyst.b").unwrap();
        {
            let store = open_store(dir.path());
            for seq in 0..64u64 {
                let owner = if seq % 2 == 0 { &a } else { &b };
                let status = Status {
                    seq: seq + 64,
                    id: format!("s-{seq}"),
                    owner: owner.clone(),
                    at_ms: 1_000 + seq as i64,
                    body: Bytes::from(format!("{{\"n\":{seq}}}")),
                };
                let record = status.encode_as(LEGACY_RECORD_VERSION);
                store
                    .set_taxii_status(&(seq % 64).to_string(), &record)
                    .unwrap();
            }
        }
        let statuses = Statuses::load(open_store(dir.path()), 2_000);
        assert_eq!(
            statuses.get("s-63", &b, 2_000).as_deref(),
            Some(&b"{\"n\":63}"[..])
        );
        assert!(statuses.get("s-0", &a, 2_000).is_some());
        assert_eq!(statuses.get("s-0", &b, 2_000), None);
        drop(statuses);
        let store = open_store(dir.path());
        let names: Vec<String> = store
            .taxii_statuses(1000)
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names.len(), 32, "{names:?}");
        assert!(names.iter().all(|n| n.contains('/')), "{names:?}");
        // After the move, each writer's last 16 are kept.
        let statuses = Statuses::load(store, 2_000);
        assert!(statuses.get("s-63", &b, 2_000).is_some());
        assert!(statuses.get("s-32", &a, 2_000).is_some());
        assert_eq!(statuses.get("s-30", &a, 2_000), None);
    }

    #[test]
    fn past_the_bound_on_writers_the_one_longest_without_a_write_goes() {
        let dir = tempfile::tempdir().unwrap();
        let writer = |n: usize| NodeId::new(&format!("analyst-{n}.soc")).unwrap();
        let statuses = Statuses::load(open_store(dir.path()), 0);
        for n in 0..MAX_WRITERS {
            statuses.keep("s", &writer(n), Bytes::from_static(b"{}"), n as i64);
        }
        // Writer 0 writes again: writer 1 is now the one longest without a write.
        statuses.keep("t", &writer(0), Bytes::from_static(b"{}"), 100);
        statuses.keep("s", &writer(MAX_WRITERS), Bytes::from_static(b"{}"), 101);
        assert!(statuses.get("s", &writer(0), 200).is_some());
        assert_eq!(statuses.get("s", &writer(1), 200), None);
        assert!(statuses.get("s", &writer(2), 200).is_some());
        assert!(statuses.get("s", &writer(MAX_WRITERS), 200).is_some());
        drop(statuses);
        let store = open_store(dir.path());
        assert_eq!(store.taxii_statuses(1000).unwrap().len(), MAX_WRITERS + 1);
        let statuses = Statuses::load(store, 200);
        assert_eq!(statuses.get("s", &writer(1), 200), None);
        assert!(statuses.get("s", &writer(2), 200).is_some());
    }

    #[test]
    fn damaged_or_misnamed_records_are_removed_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeId::new("analyst.a").unwrap();
        let b = NodeId::new("analyst.b").unwrap();
        let status = |owner: &NodeId, seq| Status {
            seq,
            id: "s".into(),
            owner: owner.clone(),
            at_ms: 10,
            body: Bytes::from_static(b"{}"),
        };
        {
            let store = open_store(dir.path());
            let good = status(&a, 3);
            store
                .set_taxii_status("analyst.a/3", &good.encode())
                .unwrap();
            // Another writer's record under a's name, a record in the wrong slot, the
            // former version under a new name, names out of form, damaged bytes.
            store
                .set_taxii_status("analyst.a/4", &status(&b, 4).encode())
                .unwrap();
            store
                .set_taxii_status("analyst.b/5", &status(&b, 4).encode())
                .unwrap();
            let old = status(&b, 6).encode_as(LEGACY_RECORD_VERSION);
            store.set_taxii_status("analyst.b/6", &old).unwrap();
            for name in [
                "analyst.b/16",
                "analyst.b/06",
                "64",
                "x",
                "Analyst.b/1",
                "a/b/1",
            ] {
                store
                    .set_taxii_status(name, &status(&b, 1).encode())
                    .unwrap();
            }
            store.set_taxii_status("analyst.b/7", b"\x02\x00").unwrap();
            store.set_taxii_status("analyst.b/8", &[]).unwrap();
        }
        let statuses = Statuses::load(open_store(dir.path()), 20);
        assert!(statuses.get("s", &a, 20).is_some());
        assert_eq!(statuses.get("s", &b, 20), None);
        drop(statuses);
        let names: Vec<String> = open_store(dir.path())
            .taxii_statuses(1000)
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["analyst.a/3"]);
    }

    #[test]
    fn names_parse_in_their_one_form_only() {
        let a = NodeId::new("analyst.a").unwrap();
        assert_eq!(
            Name::parse("analyst.a/15"),
            Some(Name::Writer(a.clone(), 15))
        );
        assert_eq!(Name::parse("analyst.a/0"), Some(Name::Writer(a, 0)));
        assert_eq!(Name::parse("63"), Some(Name::Legacy(63)));
        for bad in [
            "",
            "/",
            "64",
            "007",
            "+1",
            "analyst.a/",
            "analyst.a/16",
            "/1",
            "analyst.a/1/1",
        ] {
            assert_eq!(Name::parse(bad), None, "{bad}");
        }
    }
}
