//! The resource limits a node applies to its callers, and the count of what each one
//! refused since the node started.
//!
//! The values come from the `[limits]` section of the configuration (defaults below)
//! and are fixed for the life of the process. Every refusal is counted here, so the
//! operator can see in `entente status` which limit is being hit and how often.
//!
//! Only what one node may choose alone is here: what it lets a caller hold, and the
//! memory it gives replication (a served pull stream's page and queue, a pulled
//! transfer). What both ends of a link must agree on (the part size, the largest pull
//! message) is fixed in `sync::limits`. Depends only on the bundle format's bounds
//! (`crypto`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Default size of one `Intel.Publish` message (one bundle), in bytes.
pub const DEFAULT_PUBLISH_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Default number of `Publish` calls one partner may have open at once.
pub const DEFAULT_PUBLISHES_PER_PARTNER: usize = 2;
/// Default items per second one partner may publish (a rate, not a refusal: a faster
/// publisher is slowed down).
pub const DEFAULT_PUBLISH_ITEMS_PER_SECOND: u64 = 200_000;
/// Default streams (Subscribe, Export, Pull, Admin.LedgerShow) one partner may hold open
/// at once.
pub const DEFAULT_STREAMS_PER_PARTNER: usize = 32;
/// Default authenticated connections one partner may hold open at once.
pub const DEFAULT_CONNECTIONS_PER_PARTNER: usize = 16;
/// Default TLS handshakes in progress at once, over all sources.
pub const DEFAULT_HANDSHAKES: usize = 256;
/// Default TLS handshakes in progress at once from one source address.
pub const DEFAULT_HANDSHAKES_PER_SOURCE: usize = 16;
/// Default time a client has to complete its TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a stream may wait for its reader before the node ends it.
pub const DEFAULT_SLOW_READER_TIMEOUT: Duration = Duration::from_secs(60);
/// Default interval of HTTP/2 keepalive pings on every connection.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default time to wait for a keepalive answer before the connection is closed.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time an authenticated connection may stay open with no call in progress.
pub const DEFAULT_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);
/// Default bytes of bundles one page of a served pull stream gathers (or one feed
/// entry, when that entry alone is larger).
pub const DEFAULT_PULL_PAGE_BYTES: usize = 4 << 20;
/// Default messages (each at most one part of a bundle, or a checkpoint) queued between
/// a served pull stream and its reader.
pub const DEFAULT_PULL_QUEUE_MESSAGES: usize = 2;
/// Default bytes of items one page of a `Query` (or a TAXII objects page, or an
/// `Export` message) gathers; an item larger alone still makes a page of its own.
pub const DEFAULT_QUERY_PAGE_BYTES: usize = 4 << 20;
/// Default bytes of built answers (query pages, items) one partner may have waiting to
/// be sent at once, over all its connections. A caller that asks and never reads holds
/// its answers in the node's memory; past this budget its next call is refused.
pub const DEFAULT_UNSENT_ANSWER_BYTES: usize = 16 << 20;
/// Default bytes of items and salts a puller holds for one bundle transfer: the most
/// any bundle can bring, so that every bundle any node can publish crosses.
pub const DEFAULT_PULL_TRANSFER_BYTES: usize = MAX_PULL_TRANSFER_BYTES;

/// HTTP/2 streams one connection may have open at once (announced to the peer in its
/// HTTP/2 settings; a client waits for a free stream beyond it). Without it a connection
/// could hold any number of streams no other limit counts (`Health.Watch`, reflection,
/// unary calls whose answers are not read).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// Bounds on how large the configurable limits may be set, so a typing slip cannot
/// turn a limit off.
pub const MAX_PUBLISH_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The most bytes of items and salts one bundle can bring: that of the largest bundle
/// a node can be configured to publish. A larger `limits.pull_transfer_bytes` would
/// never be used.
pub const MAX_PULL_TRANSFER_BYTES: usize = publishable_item_bytes(MAX_PUBLISH_MESSAGE_BYTES);

/// Bytes a published item may grow by between the publish request and the bundle: an
/// assigned id and version (about 60 bytes) and its salt (16).
pub const PER_ITEM_ALLOWANCE: usize = 128;

/// The most bytes of items and salts a bundle published under
/// `publish_message_bytes` can bring: the message's bytes, plus
/// [`PER_ITEM_ALLOWANCE`] for each item it can hold (an item takes at least two bytes
/// of the message, and a bundle holds at most `crypto::MAX_ITEMS_PER_BUNDLE`).
pub const fn publishable_item_bytes(publish_message_bytes: usize) -> usize {
    let items = publish_message_bytes / 2;
    let items = if items < crate::crypto::MAX_ITEMS_PER_BUNDLE {
        items
    } else {
        crate::crypto::MAX_ITEMS_PER_BUNDLE
    };
    publish_message_bytes + items * PER_ITEM_ALLOWANCE
}

/// The limits in force (`[limits]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest `Intel.Publish` message (`limits.publish_message_bytes`).
    pub publish_message_bytes: usize,
    /// `Publish` calls one partner may have open at once (`limits.publishes_per_partner`).
    pub publishes_per_partner: usize,
    /// Items per second one partner may publish; 0 means no limit
    /// (`limits.publish_items_per_second`).
    pub publish_items_per_second: u64,
    /// Streams one partner may hold open (`limits.streams_per_partner`).
    pub streams_per_partner: usize,
    /// Connections one partner may hold open (`limits.connections_per_partner`).
    pub connections_per_partner: usize,
    /// TLS handshakes in progress at once (`limits.handshakes`).
    pub handshakes: usize,
    /// TLS handshakes in progress from one address (`limits.handshakes_per_source`).
    pub handshakes_per_source: usize,
    /// Time to complete a TLS handshake (`limits.handshake_timeout`).
    pub handshake_timeout: Duration,
    /// Time a stream waits for its reader (`limits.slow_reader_timeout`).
    pub slow_reader_timeout: Duration,
    /// HTTP/2 keepalive interval (`limits.keepalive_interval`).
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive answer deadline (`limits.keepalive_timeout`).
    pub keepalive_timeout: Duration,
    /// Time a connection may stay open with no call in progress
    /// (`limits.idle_connection_timeout`).
    pub idle_connection_timeout: Duration,
    /// Bytes of bundles one page of a served pull stream gathers
    /// (`limits.pull_page_bytes`).
    pub pull_page_bytes: usize,
    /// Messages queued between a served pull stream and its reader
    /// (`limits.pull_queue_messages`).
    pub pull_queue_messages: usize,
    /// Bytes of items and salts a puller holds for one bundle transfer; a bundle that
    /// brings more is refused (`limits.pull_transfer_bytes`).
    pub pull_transfer_bytes: usize,
    /// Bytes of items one query page gathers (`limits.query_page_bytes`).
    pub query_page_bytes: usize,
    /// Bytes of built answers one partner may have waiting to be sent
    /// (`limits.unsent_answer_bytes`).
    pub unsent_answer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            publish_message_bytes: DEFAULT_PUBLISH_MESSAGE_BYTES,
            publishes_per_partner: DEFAULT_PUBLISHES_PER_PARTNER,
            publish_items_per_second: DEFAULT_PUBLISH_ITEMS_PER_SECOND,
            streams_per_partner: DEFAULT_STREAMS_PER_PARTNER,
            connections_per_partner: DEFAULT_CONNECTIONS_PER_PARTNER,
            handshakes: DEFAULT_HANDSHAKES,
            handshakes_per_source: DEFAULT_HANDSHAKES_PER_SOURCE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            slow_reader_timeout: DEFAULT_SLOW_READER_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            idle_connection_timeout: DEFAULT_IDLE_CONNECTION_TIMEOUT,
            pull_page_bytes: DEFAULT_PULL_PAGE_BYTES,
            pull_queue_messages: DEFAULT_PULL_QUEUE_MESSAGES,
            pull_transfer_bytes: DEFAULT_PULL_TRANSFER_BYTES,
            query_page_bytes: DEFAULT_QUERY_PAGE_BYTES,
            unsent_answer_bytes: DEFAULT_UNSENT_ANSWER_BYTES,
        }
    }
}

impl Limits {
    /// Each setting as (configuration key, value in words, the limit whose refusals
    /// it counts if any), in a fixed order.
    pub fn describe(&self) -> Vec<(&'static str, String, Option<Limit>)> {
        let secs = |d: Duration| format!("{}s", d.as_secs_f64());
        let row = |limit: Limit, value: String| (limit.key(), value, Some(limit));
        vec![
            row(
                Limit::PublishMessageBytes,
                self.publish_message_bytes.to_string(),
            ),
            row(
                Limit::PublishesPerPartner,
                self.publishes_per_partner.to_string(),
            ),
            row(
                Limit::PublishItemsPerSecond,
                self.publish_items_per_second.to_string(),
            ),
            row(
                Limit::StreamsPerPartner,
                self.streams_per_partner.to_string(),
            ),
            row(
                Limit::ConnectionsPerPartner,
                self.connections_per_partner.to_string(),
            ),
            row(Limit::Handshakes, self.handshakes.to_string()),
            row(
                Limit::HandshakesPerSource,
                self.handshakes_per_source.to_string(),
            ),
            row(Limit::HandshakeTimeout, secs(self.handshake_timeout)),
            row(Limit::SlowReaderTimeout, secs(self.slow_reader_timeout)),
            row(
                Limit::IdleConnectionTimeout,
                secs(self.idle_connection_timeout),
            ),
            row(
                Limit::PullTransferBytes,
                self.pull_transfer_bytes.to_string(),
            ),
            row(
                Limit::UnsentAnswerBytes,
                self.unsent_answer_bytes.to_string(),
            ),
            row(Limit::DecodeBudget, String::from("per message type")),
            ("keepalive_interval", secs(self.keepalive_interval), None),
            ("keepalive_timeout", secs(self.keepalive_timeout), None),
            ("pull_page_bytes", self.pull_page_bytes.to_string(), None),
            ("query_page_bytes", self.query_page_bytes.to_string(), None),
            (
                "pull_queue_messages",
                self.pull_queue_messages.to_string(),
                None,
            ),
        ]
    }
}

/// A limit that can refuse something; the index into [`LimitCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A Publish message over `publish_message_bytes`.
    PublishMessageBytes,
    /// A Publish call over `publishes_per_partner`.
    PublishesPerPartner,
    /// A publisher slowed to `publish_items_per_second` (counted once per wait).
    PublishItemsPerSecond,
    /// A stream over `streams_per_partner`.
    StreamsPerPartner,
    /// A connection over `connections_per_partner`.
    ConnectionsPerPartner,
    /// A connection closed because every handshake slot was taken (the oldest
    /// handshake in progress gives way to the newest).
    Handshakes,
    /// A connection closed because its address had `handshakes_per_source` in progress.
    HandshakesPerSource,
    /// A handshake not finished within `handshake_timeout`.
    HandshakeTimeout,
    /// A stream ended because its reader did not read within `slow_reader_timeout`.
    SlowReaderTimeout,
    /// A connection closed because no call was in progress on it for
    /// `idle_connection_timeout`.
    IdleConnectionTimeout,
    /// A pulled bundle refused because it brings more than `pull_transfer_bytes` of
    /// items.
    PullTransferBytes,
    /// A call refused because its partner had `unsent_answer_bytes` of answers
    /// waiting to be sent already.
    UnsentAnswerBytes,
    /// A message refused before decoding because it holds more elements (items, tags,
    /// recipients, ...) or bytes than its type allows.
    DecodeBudget,
}

impl Limit {
    const ALL: [Limit; 13] = [
        Limit::PublishMessageBytes,
        Limit::PublishesPerPartner,
        Limit::PublishItemsPerSecond,
        Limit::StreamsPerPartner,
        Limit::ConnectionsPerPartner,
        Limit::Handshakes,
        Limit::HandshakesPerSource,
        Limit::HandshakeTimeout,
        Limit::SlowReaderTimeout,
        Limit::IdleConnectionTimeout,
        Limit::PullTransferBytes,
        Limit::UnsentAnswerBytes,
        Limit::DecodeBudget,
    ];

    /// The configuration key (under `[limits]`) or, for the fixed budgets, its name.
    pub fn key(self) -> &'static str {
        match self {
            Limit::PublishMessageBytes => "publish_message_bytes",
            Limit::PublishesPerPartner => "publishes_per_partner",
            Limit::PublishItemsPerSecond => "publish_items_per_second",
            Limit::StreamsPerPartner => "streams_per_partner",
            Limit::ConnectionsPerPartner => "connections_per_partner",
            Limit::Handshakes => "handshakes",
            Limit::HandshakesPerSource => "handshakes_per_source",
            Limit::HandshakeTimeout => "handshake_timeout",
            Limit::SlowReaderTimeout => "slow_reader_timeout",
            Limit::IdleConnectionTimeout => "idle_connection_timeout",
            Limit::PullTransferBytes => "pull_transfer_bytes",
            Limit::UnsentAnswerBytes => "unsent_answer_bytes",
            Limit::DecodeBudget => "decode_budget",
        }
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|l| *l == self)
            .unwrap_or_default()
    }
}

/// How often each limit refused something since the node started.
#[derive(Debug, Default)]
pub struct LimitCounters {
    refused: [AtomicU64; Limit::ALL.len()],
}

impl LimitCounters {
    /// Counts one refusal by `limit`.
    pub fn count(&self, limit: Limit) {
        self.refused[limit.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals by `limit` so far.
    pub fn refused(&self, limit: Limit) -> u64 {
        self.refused[limit.index()].load(Ordering::Relaxed)
    }
}

/// The process-wide counters. Limits are applied in layers that do not share a value
/// (the TLS listener, the decoder that tonic constructs itself, the engine), so the
/// counts live in one static place; there is one node per process in production, and
/// tests that run several read the sum.
pub fn counters() -> &'static LimitCounters {
    static COUNTERS: std::sync::OnceLock<LimitCounters> = std::sync::OnceLock::new();
    COUNTERS.get_or_init(LimitCounters::default)
}

/// Counts one refusal by `limit` in the process-wide counters.
pub fn count(limit: Limit) {
    counters().count(limit);
}

/// Counts of something held open per key (a partner's streams, an address's
/// handshakes), each bounded by the same maximum.
pub struct Slots<K: std::hash::Hash + Eq + Clone> {
    open: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<K, usize>>>,
    max: usize,
}

impl<K: std::hash::Hash + Eq + Clone> Slots<K> {
    /// At most `max` open per key.
    pub fn new(max: usize) -> Self {
        Self {
            open: std::sync::Arc::default(),
            max,
        }
    }

    /// The maximum per key.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes one slot for `key`, unless it holds the maximum already.
    pub fn take(&self, key: &K) -> Option<Slot<K>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            open: self.open.clone(),
            key: key.clone(),
        })
    }

    /// Slots `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(key).copied().unwrap_or(0)
    }
}

/// One slot, given back when dropped.
pub struct Slot<K: std::hash::Hash + Eq + Clone> {
    open: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<K, usize>>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Bytes held per key (a partner's answers waiting to be sent), each key bounded by
/// the same budget.
pub struct Budgets<K: std::hash::Hash + Eq + Clone> {
    held: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<K, usize>>>,
    max: usize,
}

impl<K: std::hash::Hash + Eq + Clone> Budgets<K> {
    /// At most `max` bytes held per key.
    pub fn new(max: usize) -> Self {
        Self {
            held: std::sync::Arc::default(),
            max,
        }
    }

    /// The budget per key.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Holds `bytes` for `key` until the returned value is dropped, unless that would
    /// take the key past its budget. A key that holds nothing may always take one
    /// amount, however large, so that no single answer is refused for its own size.
    pub fn take(&self, key: &K, bytes: usize) -> Option<Held<K>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = held.entry(key.clone()).or_insert(0);
        if *now > 0 && now.saturating_add(bytes) > self.max {
            return None;
        }
        *now = now.saturating_add(bytes);
        Some(Held {
            held: self.held.clone(),
            key: key.clone(),
            bytes,
            max: self.max,
        })
    }

    /// Holds as much of `want` as `key`'s budget has left, or all of it when the key
    /// holds nothing; nothing (`None`) when less than `least` is left.
    pub fn take_up_to(&self, key: &K, want: usize, least: usize) -> Option<Held<K>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = held.entry(key.clone()).or_insert(0);
        let bytes = if *now == 0 {
            want
        } else {
            want.min(self.max.saturating_sub(*now))
        };
        if bytes < least.min(want) {
            return None;
        }
        *now = now.saturating_add(bytes);
        Some(Held {
            held: self.held.clone(),
            key: key.clone(),
            bytes,
            max: self.max,
        })
    }

    /// A hold of nothing yet for `key`, to grow with [`Held::grow`] (a subscription's
    /// queue, which holds what it has not handed on).
    pub fn hold_none(&self, key: &K) -> Held<K> {
        Held {
            held: self.held.clone(),
            key: key.clone(),
            bytes: 0,
            max: self.max,
        }
    }

    /// Bytes `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(key).copied().unwrap_or(0)
    }
}

impl<K: std::hash::Hash + Eq + Clone> Held<K> {
    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `bytes` instead, without checking the budget: for an amount taken ahead
    /// that turned out different (smaller, or larger by what one element may add).
    pub fn set(&mut self, bytes: usize) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = held.entry(self.key.clone()).or_insert(0);
        *now = now.saturating_sub(self.bytes).saturating_add(bytes);
        self.bytes = bytes;
    }

    /// Holds `bytes` more, unless that would take the key past its budget (as
    /// [`Budgets::take`]: a key that holds nothing may always take one amount).
    pub fn grow(&mut self, bytes: usize) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = held.entry(self.key.clone()).or_insert(0);
        if *now > 0 && now.saturating_add(bytes) > self.max {
            return false;
        }
        *now = now.saturating_add(bytes);
        self.bytes = self.bytes.saturating_add(bytes);
        true
    }
}

/// Bytes held under a [`Budgets`], given back when dropped.
pub struct Held<K: std::hash::Hash + Eq + Clone> {
    held: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<K, usize>>>,
    key: K,
    bytes: usize,
    /// The budget per key it was taken under.
    max: usize,
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Held<K> {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(now) = held.get_mut(&self.key) {
            *now = now.saturating_sub(self.bytes);
            if *now == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// A rate per key, as token buckets holding at most one second of tokens.
pub struct Rates<K: std::hash::Hash + Eq + Clone> {
    per_second: u64,
    buckets: std::sync::Mutex<std::collections::HashMap<K, (f64, std::time::Instant)>>,
}

impl<K: std::hash::Hash + Eq + Clone> Rates<K> {
    /// `per_second` for each key; 0 means no limit.
    pub fn new(per_second: u64) -> Self {
        Self {
            per_second,
            buckets: std::sync::Mutex::default(),
        }
    }

    /// Takes `n` tokens from `key`'s bucket and says how long the caller must wait
    /// before going on (zero when the bucket held them). The debt is taken at once, so
    /// concurrent callers of one key queue up behind each other.
    pub fn take(&self, key: &K, n: u64) -> Duration {
        if self.per_second == 0 {
            return Duration::ZERO;
        }
        let rate = self.per_second as f64;
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Only configured partners publish; this bounds the map all the same.
            buckets.clear();
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        *tokens -= n as f64;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_has_its_own_counter() {
        let counters = LimitCounters::default();
        for (i, limit) in Limit::ALL.iter().enumerate() {
            assert_eq!(limit.index(), i);
            counters.count(*limit);
        }
        for limit in Limit::ALL {
            assert_eq!(counters.refused(limit), 1, "{}", limit.key());
        }
        let described = Limits::default().describe();
        for limit in Limit::ALL {
            assert!(described.iter().any(|(_, _, l)| *l == Some(limit)));
        }
    }

    #[test]
    fn slots_are_bounded_per_key_and_given_back() {
        let slots = Slots::new(2);
        let a1 = slots.take(&"a").unwrap();
        let _a2 = slots.take(&"a").unwrap();
        assert!(slots.take(&"a").is_none());
        assert!(slots.take(&"b").is_some());
        drop(a1);
        assert_eq!(slots.held(&"a"), 1);
        assert!(slots.take(&"a").is_some());
    }

    #[test]
    fn budgets_hold_bytes_per_key_and_give_them_back() {
        let budgets = Budgets::new(100);
        // Alone, an amount over the budget is held: no answer is refused for its size.
        let big = budgets.take(&"a", 150).unwrap();
        assert!(budgets.take(&"a", 1).is_none());
        assert!(budgets.take(&"b", 60).is_some());
        drop(big);
        assert_eq!(budgets.held(&"a"), 0);
        let first = budgets.take(&"a", 60).unwrap();
        let _second = budgets.take(&"a", 40).unwrap();
        assert!(budgets.take(&"a", 1).is_none());
        drop(first);
        assert_eq!(budgets.held(&"a"), 40);
        assert!(budgets.take(&"a", 60).is_some());
    }

    #[test]
    fn a_budget_grants_what_is_left_and_adjusts() {
        let budgets = Budgets::new(100);
        let mut first = budgets.take_up_to(&"a", 70, 10).unwrap();
        assert_eq!(first.bytes(), 70);
        let second = budgets.take_up_to(&"a", 70, 10).unwrap();
        assert_eq!(second.bytes(), 30);
        assert!(budgets.take_up_to(&"a", 70, 10).is_none());
        first.set(5);
        assert_eq!(budgets.held(&"a"), 35);
        drop(second);
        drop(first);
        assert_eq!(budgets.held(&"a"), 0);
        // Alone, a key gets all it asks for.
        assert_eq!(budgets.take_up_to(&"a", 500, 10).unwrap().bytes(), 500);
    }

    #[test]
    fn a_hold_grows_within_the_budget() {
        let budgets = Budgets::new(100);
        let mut queue = budgets.hold_none(&"a");
        // Alone, one amount of any size.
        assert!(queue.grow(150));
        assert!(!queue.grow(1));
        queue.set(0);
        let other = budgets.take(&"a", 60).unwrap();
        assert!(queue.grow(40));
        assert!(!queue.grow(1));
        assert_eq!(queue.bytes(), 40);
        drop(other);
        drop(queue);
        assert_eq!(budgets.held(&"a"), 0);
    }

    #[test]
    fn a_rate_lets_a_second_through_then_asks_the_caller_to_wait() {
        let rates = Rates::new(1000);
        assert_eq!(rates.take(&"a", 1000), Duration::ZERO);
        let wait = rates.take(&"a", 500);
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(501));
        assert_eq!(rates.take(&"b", 10), Duration::ZERO);
        assert_eq!(Rates::new(0).take(&"a", u64::MAX), Duration::ZERO);
    }
}
