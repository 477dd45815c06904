//! Feeds in: external TAXII 2.1 collections and MISP feeds polled on an interval, their
//! indicators published as this node's own signed items through the same engine path
//! as `Intel.Publish` (`Engine::sign`, then `Engine::store_own`). Owns the poll loops,
//! their checkpoints (kept in the store) and their state for `entente status`; must not
//! touch tonic, the policy or any other node.
//!
//! Everything a feed sends is untrusted: bodies are bounded before they are read whole
//! (`max_response_bytes`), objects per poll are bounded (`max_objects_per_poll`), and
//! every object goes through the same validation as operator input. A failing feed
//! records its error in its state and tries again with a growing delay; it never stops
//! the node.

mod http;
pub mod known;
mod misp;
mod taxii;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{FeedConfig, FeedKind};
use crate::engine::{Engine, EngineError, now_ms};

/// Most items signed as one bundle.
const ITEMS_PER_BUNDLE: usize = 1_000;
use crate::model::{Distribution, Item, ItemId, ItemKind, Partner, PartnerKind, Revocation, Role};

/// Why a poll failed, in words an operator can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FeedError {
    /// A setting of the feed cannot be used (a password file that cannot be read, a CA
    /// file that does not parse).
    #[error("{0}")]
    Config(String),
    /// The source could not be reached, or answered with an error.
    #[error("{0}")]
    Http(String),
    /// An answer was larger than `max_response_bytes`.
    #[error("{0}")]
    TooLarge(String),
    /// An answer was not what the protocol says it should be.
    #[error("{0}")]
    Malformed(String),
    /// Publishing or storing failed.
    #[error("{0}")]
    Publish(String),
}

/// What a feed's loop reports (for `entente status` and `Admin.Feeds`).
#[derive(Clone, Debug, Default)]
pub struct FeedState {
    /// `taxii` or `misp`.
    pub kind: String,
    /// The URL polled (without credentials or query).
    pub url: String,
    /// When the last poll ended, ms (0: never).
    pub last_poll_ms: i64,
    /// When the last poll that succeeded ended, ms (0: never).
    pub last_success_ms: i64,
    /// Polls ended since the node started.
    pub polls: u64,
    /// Polls that failed since the node started.
    pub failures: u64,
    /// Objects (STIX objects, MISP attributes) fetched since the node started.
    pub objects_fetched: u64,
    /// Items published (new, or newer versions) since the node started.
    pub items_ingested: u64,
    /// Items skipped because this or a newer version is held already.
    pub items_unchanged: u64,
    /// Objects that did not become items (not an indicator, unmapped type, invalid).
    pub objects_skipped: u64,
    /// The last error, in plain words; cleared by a poll that succeeds.
    pub last_error: Option<String>,
    /// Where the feed stands (the TAXII `added_after`, or the MISP events held).
    pub checkpoint: String,
    /// The first reasons objects were skipped in the last poll that skipped any with a
    /// reason; kept until another does.
    pub skip_reasons: Vec<String>,
}

/// The state of every feed, shared between the loops and the Admin service.
pub type FeedStates = Arc<std::sync::Mutex<BTreeMap<String, FeedState>>>;

fn update(states: &FeedStates, name: &str, f: impl FnOnce(&mut FeedState)) {
    let mut map = states.lock().unwrap_or_else(|p| p.into_inner());
    // A feed no longer configured has left the status; its stopping loop adds nothing.
    if let Some(state) = map.get_mut(name) {
        f(state);
    }
}

/// What one poll did.
#[derive(Debug, Default)]
struct PollReport {
    fetched: u64,
    ingested: u64,
    unchanged: u64,
    skipped: u64,
    /// The first few reasons objects were skipped, for the log.
    skip_reasons: Vec<String>,
}

impl PollReport {
    fn skip(&mut self, reason: String) {
        self.skipped += 1;
        if self.skip_reasons.len() < 5 {
            self.skip_reasons.push(reason);
        }
    }
}

/// The poll loops, one per `[[feed]]` of the configuration in force: [`FeedLoops::apply`]
/// (at start and at each reload) stops the loop of a feed removed or changed, and starts
/// one for a feed added or changed; an unchanged feed's loop goes on undisturbed.
pub struct FeedLoops {
    engine: Arc<Engine>,
    states: FeedStates,
    shutdown: CancellationToken,
    running: std::sync::Mutex<BTreeMap<String, RunningFeed>>,
}

/// A feed's loop and the settings it runs with.
struct RunningFeed {
    config: FeedConfig,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl FeedLoops {
    /// No loop yet; each ends when `shutdown` is cancelled.
    pub fn new(engine: Arc<Engine>, states: FeedStates, shutdown: CancellationToken) -> Self {
        Self {
            engine,
            states,
            shutdown,
            running: std::sync::Mutex::default(),
        }
    }

    /// Puts `feeds` in force. Must run inside the runtime (it spawns). A stopped loop
    /// ends at its next await point: a poll in progress is cut there, and its
    /// checkpoint stays where the last durable page or event left it.
    pub fn apply(&self, feeds: &[FeedConfig]) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|name, feed| {
            let keep = feeds.iter().any(|f| &f.name == name && f == &feed.config);
            if !keep {
                feed.stop.cancel();
                tracing::info!(feed = %name, "feed stopped");
            }
            keep
        });
        {
            let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            states.retain(|name, _| feeds.iter().any(|f| &f.name == name));
            for feed in feeds {
                if !running.contains_key(&feed.name) {
                    // A changed feed starts over in the status; its checkpoint stays, and
                    // is shown from the start (a poll that finds nothing new leaves it).
                    states.insert(
                        feed.name.clone(),
                        FeedState {
                            kind: feed.kind.as_str().to_owned(),
                            url: http::shown(&feed.url),
                            checkpoint: self.saved_checkpoint(feed),
                            ..FeedState::default()
                        },
                    );
                }
            }
        }
        for feed in feeds {
            if running.contains_key(&feed.name) {
                continue;
            }
            let stop = self.shutdown.child_token();
            let task = tokio::spawn(run(
                feed.clone(),
                self.engine.clone(),
                self.states.clone(),
                stop.clone(),
            ));
            running.insert(
                feed.name.clone(),
                RunningFeed {
                    config: feed.clone(),
                    stop,
                    task,
                },
            );
        }
    }

    /// The checkpoint `feed` saved, in the words `status` shows; empty if none.
    fn saved_checkpoint(&self, feed: &FeedConfig) -> String {
        let saved = match load_checkpoint(&self.engine, &feed.name) {
            Ok(Some(bytes)) => bytes,
            _ => return String::new(),
        };
        match feed.kind {
            FeedKind::Taxii => taxii::describe_checkpoint(&saved),
            FeedKind::Misp => misp::describe_checkpoint(&saved),
        }
        .unwrap_or_default()
    }

    /// Waits for every loop to end (after the node's shutdown token is cancelled).
    pub async fn join(&self) {
        let running = std::mem::take(&mut *self.running.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, feed) in running {
            let _ = feed.task.await;
        }
    }
}

/// Shortest and longest wait before a failed poll is tried again.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(15 * 60);

async fn run(
    feed: FeedConfig,
    engine: Arc<Engine>,
    states: FeedStates,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("feed", feed = %feed.name, kind = feed.kind.as_str());
    let mut failures: u32 = 0;
    loop {
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = poll(&feed, &engine, &states) => outcome,
        };
        if shutdown.is_cancelled() {
            return;
        }
        let now = now_ms();
        let wait = match outcome {
            Ok(report) => {
                failures = 0;
                tracing::info!(
                    parent: &span,
                    fetched = report.fetched,
                    ingested = report.ingested,
                    unchanged = report.unchanged,
                    skipped = report.skipped,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "feed polled"
                );
                if !report.skip_reasons.is_empty() {
                    tracing::info!(parent: &span, reasons = ?report.skip_reasons, "feed objects skipped");
                }
                update(&states, &feed.name, |s| {
                    s.polls += 1;
                    s.last_poll_ms = now;
                    s.last_success_ms = now;
                    s.objects_fetched += report.fetched;
                    s.items_ingested += report.ingested;
                    s.items_unchanged += report.unchanged;
                    s.objects_skipped += report.skipped;
                    s.last_error = None;
                    if !report.skip_reasons.is_empty() {
                        s.skip_reasons = report.skip_reasons.clone();
                    }
                });
                feed.interval
            }
            Err((error, report)) => {
                failures = failures.saturating_add(1);
                let backoff = FIRST_RETRY
                    .saturating_mul(1u32 << failures.min(16).saturating_sub(1))
                    .min(LAST_RETRY);
                let wait = backoff.min(feed.interval.max(FIRST_RETRY));
                tracing::warn!(
                    parent: &span,
                    %error,
                    ingested = report.ingested,
                    retry_in_s = wait.as_secs_f64(),
                    "feed poll failed"
                );
                update(&states, &feed.name, |s| {
                    s.polls += 1;
                    s.failures += 1;
                    s.last_poll_ms = now;
                    s.objects_fetched += report.fetched;
                    s.items_ingested += report.ingested;
                    s.items_unchanged += report.unchanged;
                    s.objects_skipped += report.skipped;
                    s.last_error = Some(error.to_string());
                    if !report.skip_reasons.is_empty() {
                        s.skip_reasons = report.skip_reasons.clone();
                    }
                });
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

type PollOutcome = Result<PollReport, (FeedError, PollReport)>;

async fn poll(feed: &FeedConfig, engine: &Arc<Engine>, states: &FeedStates) -> PollOutcome {
    match feed.kind {
        FeedKind::Taxii => taxii::poll(feed, engine, states).await,
        FeedKind::Misp => misp::poll(feed, engine, states).await,
    }
}

/// The tag every item of feed `name` carries.
fn source_tag(name: &str) -> String {
    format!("source:{name}")
}

/// Why an object with `tags` may not be published by feed `feed`: it carries a
/// `source:` tag (any case) that the feed's configuration does not give. Such a tag is
/// neither kept (the feed would speak for another source, and pass an `allow_tags`
/// naming it) nor dropped (a `deny_tags` naming it would no longer hold the item back):
/// the object is skipped.
fn unclaimed_source(feed: &FeedConfig, tags: &[String]) -> Option<String> {
    let tag = tags.iter().find(|tag| {
        tag.get(..7)
            .is_some_and(|head| head.eq_ignore_ascii_case("source:"))
            && !feed
                .tags
                .iter()
                .any(|given| given.eq_ignore_ascii_case(tag))
    })?;
    Some(format!(
        "labelled {tag:?}, a source: tag the feed's configuration does not give; skipped, \
         since publishing it without the tag could send it where the tag is denied"
    ))
}

/// Publishes `items` of feed `feed` as this node's own, skipping those held at the same
/// or a newer version, through the checks of `Intel.Publish`; then makes them durable.
///
/// A feed speaks only for itself: an object carrying a `source:` tag the feed's
/// configuration does not give (`source:<feed>` always) is skipped, with the tag as the
/// reason (dropping the tag could send the item where a policy's `deny_tags` names it),
/// and an id the node holds from another of its sources (an analyst's publication,
/// another feed) is not updated or revoked by this one.
async fn publish(
    engine: &Arc<Engine>,
    feed: &FeedConfig,
    items: Vec<Item>,
    report: &mut PollReport,
) -> Result<(), FeedError> {
    publish_reviving(engine, feed, items, &HashSet::new(), report).await
}

/// [`publish`], where the indicators whose ids are in `revive` are live again at their
/// source after this feed revoked them (a MISP event listed again, an attribute no
/// longer deleted): held as a revocation this feed made when its source withdrew the
/// item, such an indicator is published as a new version dated just after that
/// revocation when its own date is not later, rather than passed over as older than
/// what is held. A revocation the operator made is not undone this way.
async fn publish_reviving(
    engine: &Arc<Engine>,
    feed: &FeedConfig,
    items: Vec<Item>,
    revive: &HashSet<ItemId>,
    report: &mut PollReport,
) -> Result<(), FeedError> {
    let own_source = source_tag(&feed.name);
    let mut claimed: Vec<Item> = Vec::with_capacity(items.len());
    for item in items {
        // A revocation carries the tags of the item held, whatever the source says.
        if !matches!(item.kind, ItemKind::Revocation(_)) {
            if let Some(reason) = unclaimed_source(feed, &item.tags) {
                report.skip(format!("{}: {reason}", item.id));
                continue;
            }
        }
        claimed.push(item);
    }
    let items = claimed;
    let engine_for_task = engine.clone();
    let revive: HashSet<ItemId> = items
        .iter()
        .filter(|item| revive.contains(&item.id))
        .map(|item| item.id.clone())
        .collect();
    let feed_name = feed.name.clone();
    let (ingested, unchanged, refused) = tokio::task::spawn_blocking(move || {
        let engine = engine_for_task;
        let own = engine.policy().node().clone();
        let own = &own;
        let mut fresh: Vec<Item> = Vec::with_capacity(items.len());
        let mut unchanged = 0u64;
        let mut refused = Vec::new();
        for item in items {
            // The same id twice in one poll: the newest version counts.
            if let Some(at) = fresh.iter().position(|i| i.id == item.id) {
                if fresh[at].modified_ms < item.modified_ms {
                    fresh[at] = item;
                }
                unchanged += 1;
                continue;
            }
            match engine.store().get(&item.id) {
                // Single writer: an id another origin published stays theirs.
                Ok(Some(held)) if &held.origin != own => refused.push(format!(
                    "{}: the id is held from {}; only its origin may update it",
                    item.id, held.origin
                )),
                // This node's own item from another source: this feed did not publish
                // it, so it may not replace or revoke it.
                Ok(Some(held))
                    if !held
                        .item
                        .tags
                        .iter()
                        .any(|t| t.eq_ignore_ascii_case(&own_source)) =>
                {
                    refused.push(format!(
                        "{}: the id is held from another source of this node; only that source may update it",
                        item.id
                    ))
                }
                // Revoked by this feed, listed again by the source: live again, dated
                // after the revocation so that it replaces it.
                // Only a revocation this feed made when its source withdrew the item:
                // one the operator made stays (a checkpoint lost with the metadata
                // takes every event for one listed again).
                Ok(Some(held))
                    if matches!(&held.item.kind, ItemKind::Revocation(r)
                        if misp::withdrawn_by_feed(&r.reason, &feed_name))
                        && matches!(item.kind, ItemKind::Indicator(_))
                        && revive.contains(&item.id) =>
                {
                    let mut item = item;
                    item.modified_ms = item
                        .modified_ms
                        .max(held.item.modified_ms.saturating_add(1));
                    fresh.push(item);
                }
                Ok(Some(held)) if held.item.modified_ms >= item.modified_ms => unchanged += 1,
                // The source revoked what this node made from it: the node revokes its
                // item as `entente revoke` does, with the marking, type and tags it was
                // shared under (whatever the revoked version now says of them), so
                // every partner that received it receives the revocation.
                Ok(Some(held)) if matches!(item.kind, ItemKind::Revocation(_)) => {
                    match revocation_of(&held.item, &item) {
                        Some(revocation) => fresh.push(revocation),
                        None => unchanged += 1,
                    }
                }
                Ok(_) => fresh.push(item),
                Err(e) => return Err(FeedError::Publish(format!("store: {e}"))),
            }
        }
        let publisher = Partner {
            id: own.clone(),
            kind: PartnerKind::Local,
            role: Role::Admin,
        };
        let mut ingested = 0u64;
        for chunk in fresh.chunks(ITEMS_PER_BUNDLE) {
            let signed = match engine.sign(&publisher, chunk, &Distribution::default(), now_ms()) {
                Ok(signed) => vec![signed],
                // One item the publishing checks refuse (a revocation of an indicator
                // this node does not hold, a version dated ahead) must not hold back
                // the others: each is tried alone.
                Err(EngineError::Unpublishable(_)) => {
                    let mut each = Vec::with_capacity(chunk.len());
                    for item in chunk {
                        match engine.sign(
                            &publisher,
                            std::slice::from_ref(item),
                            &Distribution::default(),
                            now_ms(),
                        ) {
                            Ok(signed) => each.push(signed),
                            Err(EngineError::Unpublishable(why)) => {
                                refused.push(format!("{}: {why}", item.id));
                            }
                            Err(e) => return Err(FeedError::Publish(format!("publishing: {e}"))),
                        }
                    }
                    each
                }
                Err(e) => return Err(FeedError::Publish(format!("publishing: {e}"))),
            };
            for bundle in signed {
                let receipt = engine
                    .store_own(&bundle, now_ms())
                    .map_err(|e| FeedError::Publish(format!("storing: {e}")))?;
                ingested += receipt.report.stored.len() as u64;
                unchanged += receipt.report.duplicates as u64;
                for (at, why) in &receipt.report.rejected {
                    refused.push(format!("item {at} of bundle {}: {why}", receipt.bundle_id));
                }
            }
        }
        Ok((ingested, unchanged, refused))
    })
    .await
    .map_err(|e| FeedError::Publish(format!("task failed: {e}")))??;
    report.ingested += ingested;
    report.unchanged += unchanged;
    for why in refused {
        report.skip(why);
    }
    engine
        .flush()
        .await
        .map_err(|e| FeedError::Publish(format!("flush: {e}")))?;
    Ok(())
}

/// The revocation of `held` (this node's item) that `revoked` (what the source now says
/// of it) asks for: `held`'s marking, type and tags, the indicator it last carried, the
/// reason the source gives, dated like `revoked`. `None` when `held` is revoked already
/// or is not an indicator.
fn revocation_of(held: &Item, revoked: &Item) -> Option<Item> {
    let ItemKind::Indicator(indicator) = &held.kind else {
        return None;
    };
    let reason = match &revoked.kind {
        ItemKind::Revocation(r) => r.reason.clone(),
        _ => return None,
    };
    Some(Item {
        id: held.id.clone(),
        modified_ms: revoked.modified_ms,
        tlp: held.tlp,
        tags: held.tags.clone(),
        kind: ItemKind::Revocation(Revocation {
            indicator_type: indicator.indicator_type,
            reason,
            indicator: Some(Box::new(indicator.clone())),
        }),
    })
}

/// Records a feed's checkpoint after the items it counts are durable.
async fn save_checkpoint(
    engine: &Arc<Engine>,
    name: &str,
    checkpoint: Vec<u8>,
) -> Result<(), FeedError> {
    let store = engine.store().clone();
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        store.set_feed_checkpoint(&name, &checkpoint)?;
        store.flush()
    })
    .await
    .map_err(|e| FeedError::Publish(format!("task failed: {e}")))?
    .map_err(|e| FeedError::Publish(format!("saving the checkpoint: {e}")))
}

fn load_checkpoint(engine: &Arc<Engine>, name: &str) -> Result<Option<Vec<u8>>, FeedError> {
    engine
        .store()
        .feed_checkpoint(name)
        .map_err(|e| FeedError::Publish(format!("reading the checkpoint: {e}")))
}
