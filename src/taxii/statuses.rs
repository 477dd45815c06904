//! The status resources of TAXII writes: kept in memory for their writers (16 MiB, the
//! oldest dropped first) and in the store, in a ring of [`SLOTS`] slots, so that they
//! outlive a restart. A status is readable by its writer only, for
//! [`LIFETIME_MS`]; anyone else's, an expired one and one never written are the same 404.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use hyper::body::Bytes;

use crate::model::NodeId;
use crate::store::Store;

/// Bytes of status resources kept in memory; the oldest go first.
const MEMORY_BYTES: usize = 16 * 1024 * 1024;
/// Status slots in the store: the last this many writes' statuses outlive a restart.
pub const SLOTS: u32 = 64;
/// Largest status kept in the store (a larger one is kept in memory only); with
/// [`SLOTS`], the store holds at most 64 MiB of statuses.
pub const MAX_STORED_BYTES: usize = 1024 * 1024;
/// How long a status stays readable: 24 hours.
pub const LIFETIME_MS: i64 = 24 * 60 * 60 * 1000;
/// Format of a stored status record.
const RECORD_VERSION: u8 = 1;

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
        let mut out = Vec::with_capacity(32 + self.id.len() + self.body.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        for text in [self.id.as_str(), self.owner.as_str()] {
            out.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(&text.as_bytes()[..text.len().min(255)]);
        }
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_STORED_BYTES + 1024 {
            return None;
        }
        let (&version, rest) = bytes.split_first()?;
        if version != RECORD_VERSION || rest.len() < 16 {
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
        Some(Self {
            seq: u64::from_be_bytes(seq.try_into().ok()?),
            id: texts.swap_remove(0),
            owner,
            at_ms: i64::from_be_bytes(at.try_into().ok()?),
            body: Bytes::copy_from_slice(rest),
        })
    }

    fn live(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.at_ms) < LIFETIME_MS
            && self.at_ms <= now_ms.saturating_add(LIFETIME_MS)
    }
}

#[derive(Default)]
struct Ring {
    entries: VecDeque<Status>,
    bytes: usize,
    /// The next write's sequence number; its slot is `seq % SLOTS`.
    seq: u64,
}

impl Ring {
    fn push(&mut self, status: Status) {
        self.bytes += status.body.len();
        self.entries.push_back(status);
        while self.bytes > MEMORY_BYTES {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= old.body.len(),
                None => break,
            }
        }
    }
}

/// The status resources of one listener.
pub struct Statuses {
    store: Arc<dyn Store>,
    ring: Mutex<Ring>,
}

impl Statuses {
    /// The statuses kept in `store` that are still readable at `now_ms`.
    pub fn load(store: Arc<dyn Store>, now_ms: i64) -> Self {
        let mut kept = Vec::new();
        let mut next_seq = 0u64;
        for slot in 0..SLOTS {
            match store.taxii_status(slot) {
                Ok(Some(bytes)) => match Status::decode(&bytes) {
                    Some(status) => {
                        next_seq = next_seq.max(status.seq.saturating_add(1));
                        if status.live(now_ms) {
                            kept.push(status);
                        }
                    }
                    None => {
                        tracing::warn!(slot, "a kept TAXII status does not decode; passed over")
                    }
                },
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(slot, %error, "a kept TAXII status could not be read");
                }
            }
        }
        kept.sort_by_key(|s| s.seq);
        let mut ring = Ring {
            seq: next_seq,
            ..Ring::default()
        };
        for status in kept {
            ring.push(status);
        }
        Self {
            store,
            ring: Mutex::new(ring),
        }
    }

    /// Keeps the status `id` of a write by `owner`: in memory, and in the store when it
    /// is at most [`MAX_STORED_BYTES`] (durable with the next flush). From a blocking
    /// thread.
    pub fn keep(&self, id: &str, owner: &NodeId, body: Bytes, now_ms: i64) {
        let status = {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            let status = Status {
                seq: ring.seq,
                id: id.to_owned(),
                owner: owner.clone(),
                at_ms: now_ms,
                body,
            };
            ring.seq += 1;
            ring.push(status.clone());
            status
        };
        if status.body.len() <= MAX_STORED_BYTES {
            let slot = (status.seq % u64::from(SLOTS)) as u32;
            if let Err(error) = self.store.set_taxii_status(slot, &status.encode()) {
                tracing::warn!(%error, "a TAXII status could not be kept in the store; it is kept in memory");
            }
        }
    }

    /// The status `id` if `caller` wrote it and it is still readable.
    pub fn get(&self, id: &str, caller: &NodeId, now_ms: i64) -> Option<Bytes> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.entries
            .iter()
            .rev()
            .find(|s| s.id == id && &s.owner == caller && s.live(now_ms))
            .map(|s| s.body.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(Status::decode(&encoded), Some(status.clone()));
        for cut in 0..encoded.len() - status.body.len() {
            assert_eq!(Status::decode(&encoded[..cut]), None, "{cut}");
        }
        assert!(status.live(1_000 + LIFETIME_MS - 1));
        assert!(!status.live(1_000 + LIFETIME_MS));
    }
}
