//! `GET /metrics`: the node's state in the OpenMetrics text format, read fresh at each
//! scrape from where it lives (the link states, the served positions and counters in
//! `telemetry`, the limit counters, the store, the certificates). Builds a registry per
//! scrape; holds no state of its own.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Snapshot, certificates};
use crate::telemetry::{Labels, telemetry};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type IntGauges = Family<Labels, Gauge<i64, AtomicI64>>;
type FloatGauges = Family<Labels, Gauge<f64, AtomicU64>>;

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The exposition of `snapshot` and the process-wide counters.
pub fn render(snapshot: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("entente");

    // Pulled links: how far this node is behind each peer's feed.
    let link_caught_up = IntGauges::default();
    let link_lag_seconds = FloatGauges::default();
    let link_connected = IntGauges::default();
    for (peer, state) in &snapshot.links {
        let l = labels(&[("peer", peer.as_str())]);
        link_caught_up
            .get_or_create(&l)
            .set(i64::from(state.caught_up()));
        let behind_ms = state
            .behind_since_ms
            .map_or(0, |since| (snapshot.now_ms - since).max(0));
        link_lag_seconds
            .get_or_create(&l)
            .set(behind_ms as f64 / 1000.0);
        link_connected
            .get_or_create(&l)
            .set(i64::from(state.connected));
    }
    registry.register(
        "pull_caught_up",
        "Whether this node is caught up with each peer's change feed as of the peer's last checkpoint (1) or not (0); a peer gives its feed positions only sealed, so how many entries behind is not known",
        link_caught_up,
    );
    registry.register(
        "pull_lag_seconds",
        "How long this node has been behind each peer it pulls from (0 when caught up)",
        link_lag_seconds,
    );
    registry.register(
        "pull_connected",
        "Whether a pull stream to the peer is open (1) or not (0)",
        link_connected,
    );

    // Served feed: each partner's position in this node's feed.
    let feed_head = Gauge::<i64, AtomicI64>::default();
    feed_head.set(int(snapshot.feed_head));
    registry.register("feed_head", "This node's change-feed head", feed_head);
    let served_cursor = IntGauges::default();
    let served_lag = IntGauges::default();
    for (partner, position) in &snapshot.served {
        let l = labels(&[("partner", partner.as_str())]);
        served_cursor.get_or_create(&l).set(int(position.cursor));
        served_lag
            .get_or_create(&l)
            .set(int(snapshot.feed_head.saturating_sub(position.cursor)));
    }
    registry.register(
        "served_cursor",
        "Position in this node's feed each partner pulling from it has been served up to (this node's own view; the partner sees it only sealed)",
        served_cursor,
    );
    registry.register(
        "served_lag_entries",
        "Feed entries each partner pulling from this node is behind this node's feed head",
        served_lag,
    );

    let t = telemetry();
    registry.register(
        "pulled_bundles",
        "Bundles pulled from peers, by outcome and rejection reason",
        t.pulled_bundles.clone(),
    );
    registry.register(
        "pulled_items",
        "Items pulled from peers, by outcome and rejection reason",
        t.pulled_items.clone(),
    );
    registry.register(
        "withheld_items",
        "Items withheld from a partner's pull by the sharing policy, by rule (each decision counted)",
        t.withheld.clone(),
    );
    registry.register(
        "handshakes_refused",
        "TLS handshakes and admissions refused, by reason",
        t.handshakes_refused.clone(),
    );
    registry.register(
        "rpc_duration_seconds",
        "Time to answer a gRPC call (to its response headers; a stream's first message), by method",
        t.rpc_seconds.clone(),
    );

    let limit_refused = Family::<Labels, Counter>::default();
    let counters = crate::limits::counters();
    for (key, _, limit) in snapshot.limits.describe() {
        if let Some(limit) = limit {
            limit_refused
                .get_or_create(&labels(&[("limit", key)]))
                .inc_by(counters.refused(limit));
        }
    }
    registry.register(
        "limit_refused",
        "Requests and connections refused by each configured limit since the node started",
        limit_refused,
    );

    let store_bytes = Gauge::<i64, AtomicI64>::default();
    store_bytes.set(int(snapshot.store_bytes));
    registry.register(
        "store_size_bytes",
        "Bytes the store takes on disk",
        store_bytes,
    );
    let ledger = Gauge::<i64, AtomicI64>::default();
    ledger.set(int(snapshot.ledger_records));
    registry.register("ledger_records", "Records in the disclosure ledger", ledger);
    let retention_failing = Gauge::<i64, AtomicI64>::default();
    retention_failing.set(i64::from(snapshot.retention.failing.is_some()));
    registry.register(
        "ledger_retention_failing",
        "Whether the disclosure ledger's retention is failing now (1: segments due are kept, an archive directory the node cannot write, say) or not (0)",
        retention_failing,
    );
    let retention_failures = Counter::<u64>::default();
    retention_failures.inc_by(snapshot.retention.failures);
    registry.register(
        "ledger_retention_failures",
        "Ledger retention attempts that failed since the node started",
        retention_failures,
    );

    let expiry = FloatGauges::default();
    for cert in &snapshot.certificates {
        expiry
            .get_or_create(&labels(&[
                ("certificate", cert.role),
                ("subject", cert.subject.as_str()),
            ]))
            .set(certificates::days_left(cert, snapshot.now_ms));
    }
    let revoked = IntGauges::default();
    for cert in snapshot.certificates.iter().filter(|c| c.role == "own") {
        revoked
            .get_or_create(&labels(&[("certificate", cert.role)]))
            .set(i64::from(cert.revoked_by.is_some()));
    }
    registry.register(
        "certificate_revoked",
        "Whether a CRL in force revokes this node's own certificate (1: partners refuse the node until it has a new certificate) or not (0)",
        revoked,
    );
    registry.register(
        "certificate_expiry_days",
        "Days until each certificate expires (negative once it has): this node's own as presented, its certificate file when a restart has yet to put it in use, its trust anchors in force, and the last certificate of each partner",
        expiry,
    );

    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}
