//! What the node counts for its operator's metrics and console: pulled bundles and
//! items by outcome and reason, items withheld from partners by policy rule, refused
//! handshakes by reason, RPC latency per method, each partner's position in this
//! node's change feed, and the most recent rejections in words.
//!
//! Like the limit counters (`limits::counters`) these live in one static place: there
//! is one node per process in production, and a test that runs several nodes in one
//! process reads their sum. Every label value is either a configured partner id, a
//! gRPC method path this node serves, or a fixed word from this module's callers, so
//! the number of series is bounded by the configuration. Must not touch the engine, the
//! store or any connection; callers hand it what they counted.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// A metric's labels, as (name, value) pairs.
pub type Labels = Vec<(&'static str, String)>;

/// How many rejections [`Telemetry::recent_rejections`] keeps.
pub const RECENT_REJECTIONS: usize = 100;

/// The reason of a pulled bundle refused for a passing reason (a signer certificate not
/// supplied yet, a time ahead of this node's clock): it is pulled again, and counted
/// under the outcome `held_back` until it is settled.
pub const HELD_BACK: &str = "refused_for_now";

/// The longest rejection text kept, in bytes (a partner chooses part of it).
pub const MAX_REJECTION_TEXT: usize = 1024;

/// One rejected bundle or item set, as the console lists it.
#[derive(Clone, Debug)]
pub struct Rejection {
    /// When it was rejected, ms since the epoch.
    pub time_ms: i64,
    /// The peer it came from.
    pub peer: String,
    /// The fixed reason word (the metric label).
    pub reason: &'static str,
    /// The rejection in words, as logged (may quote what the peer sent).
    pub detail: String,
}

/// Where a partner that pulls from this node stands in its change feed, as of the
/// last page of it the node served (this node's own positions; the partner is given
/// them only sealed).
#[derive(Clone, Copy, Debug, Default)]
pub struct ServedPosition {
    /// The position the partner has been sent everything up to (or had withheld).
    pub cursor: u64,
    /// This node's feed head when that page was read.
    pub head: u64,
    /// When the page was served, ms since the epoch.
    pub time_ms: i64,
}

/// The node's counters; see [`telemetry`].
pub struct Telemetry {
    /// Bundles pulled, by `peer` and `outcome` (`accepted` or `rejected`) and `reason`.
    pub pulled_bundles: Family<Labels, Counter>,
    /// Items pulled, by `peer`, `outcome` and `reason`.
    pub pulled_items: Family<Labels, Counter>,
    /// Item decisions that withheld an item from a partner's pull, by `partner` and
    /// `rule`.
    pub withheld: Family<Labels, Counter>,
    /// TLS handshakes and admissions refused, by `reason`.
    pub handshakes_refused: Family<Labels, Counter>,
    /// Time to answer a gRPC call (to its response headers), by `method`, seconds.
    pub rpc_seconds: Family<Labels, Histogram>,
    served: Mutex<BTreeMap<String, ServedPosition>>,
    recent: Mutex<VecDeque<Rejection>>,
}

fn rpc_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The node's counters (one set per process).
pub fn telemetry() -> &'static Telemetry {
    static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();
    TELEMETRY.get_or_init(|| Telemetry {
        pulled_bundles: Family::default(),
        pulled_items: Family::default(),
        withheld: Family::default(),
        handshakes_refused: Family::default(),
        rpc_seconds: Family::new_with_constructor(rpc_histogram),
        served: Mutex::default(),
        recent: Mutex::default(),
    })
}

impl Telemetry {
    /// Counts a pulled bundle from `peer`: accepted (`reason` `None`), rejected for
    /// `reason`, or, with `reason` [`HELD_BACK`], refused for a passing reason and to be
    /// pulled again (outcome `held_back`, not counted as rejected), with the items it
    /// stored and rejected. A rejection or hold is also kept, with `detail`, among the
    /// recent ones.
    pub fn pulled(
        &self,
        peer: &str,
        reason: Option<&'static str>,
        items_stored: u64,
        items_rejected: (u64, &'static str),
        detail: Option<String>,
        now_ms: i64,
    ) {
        let (outcome, why) = match reason {
            None => ("accepted", ""),
            Some(HELD_BACK) => ("held_back", HELD_BACK),
            Some(reason) => ("rejected", reason),
        };
        let labels = |outcome: &str, reason: &str| -> Labels {
            vec![
                ("peer", peer.to_owned()),
                ("outcome", outcome.to_owned()),
                ("reason", reason.to_owned()),
            ]
        };
        self.pulled_bundles
            .get_or_create(&labels(outcome, why))
            .inc();
        if items_stored > 0 {
            self.pulled_items
                .get_or_create(&labels("accepted", ""))
                .inc_by(items_stored);
        }
        let (rejected, item_reason) = items_rejected;
        if rejected > 0 {
            self.pulled_items
                .get_or_create(&labels("rejected", item_reason))
                .inc_by(rejected);
        }
        if let Some(detail) = detail {
            let reason = reason.unwrap_or(item_reason);
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT_REJECTIONS {
                recent.pop_front();
            }
            recent.push_back(Rejection {
                time_ms: now_ms,
                peer: peer.to_owned(),
                reason,
                detail: truncate(detail, MAX_REJECTION_TEXT),
            });
        }
    }

    /// Counts `n` items withheld from `partner` by the rule named `rule`.
    pub fn withheld(&self, partner: &str, rule: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        self.withheld
            .get_or_create(&vec![
                ("partner", partner.to_owned()),
                ("rule", rule.to_owned()),
            ])
            .inc_by(n);
    }

    /// Counts a refused handshake or admission.
    pub fn handshake_refused(&self, reason: &'static str) {
        self.handshakes_refused
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// Records how long a call of `method` took to answer.
    pub fn rpc_answered(&self, method: &str, seconds: f64) {
        self.rpc_seconds
            .get_or_create(&vec![("method", method.to_owned())])
            .observe(seconds);
    }

    /// Records the page of its feed just served to `partner`.
    pub fn served(&self, partner: &str, cursor: u64, head: u64, now_ms: i64) {
        self.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                partner.to_owned(),
                ServedPosition {
                    cursor,
                    head,
                    time_ms: now_ms,
                },
            );
    }

    /// Each partner's position in this node's feed, by partner id.
    pub fn served_positions(&self) -> BTreeMap<String, ServedPosition> {
        self.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The most recent rejections, newest first.
    pub fn recent_rejections(&self) -> Vec<Rejection> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().cloned().collect()
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_kept_newest_first_and_bounded() {
        let t = Telemetry {
            pulled_bundles: Family::default(),
            pulled_items: Family::default(),
            withheld: Family::default(),
            handshakes_refused: Family::default(),
            rpc_seconds: Family::new_with_constructor(rpc_histogram),
            served: Mutex::default(),
            recent: Mutex::default(),
        };
        for i in 0..(RECENT_REJECTIONS + 5) {
            t.pulled(
                "berlin.office",
                Some("signature"),
                0,
                (3, "signature"),
                Some(format!("seq {i}: {}", "x".repeat(2000))),
                i as i64,
            );
        }
        let recent = t.recent_rejections();
        assert_eq!(recent.len(), RECENT_REJECTIONS);
        assert_eq!(recent[0].time_ms, (RECENT_REJECTIONS + 4) as i64);
        assert!(recent[0].detail.len() <= MAX_REJECTION_TEXT + '…'.len_utf8());
        let cut = truncate("ééé".into(), 3);
        assert_eq!(cut, "é…");
    }
}
