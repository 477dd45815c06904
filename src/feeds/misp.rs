//! MISP feeds as MISP publishes them: `manifest.json` maps each event's uuid to its
//! `info` and `timestamp`; `<uuid>.json` holds the event (`Event` with `Attribute`s,
//! `Object`s holding more attributes, and `Tag`s). Events new or changed since they were
//! last taken are fetched; attributes marked `to_ids` of the common types become
//! indicators whose id is derived from this node and the attribute's uuid, so polling
//! again updates them rather than adding others.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::http::Client;
use super::{FeedError, FeedStates, PollOutcome, PollReport, publish_reviving, update};
use crate::config::FeedConfig;
use crate::engine::Engine;
use crate::model::{
    Indicator, IndicatorType, Item, ItemId, ItemKind, StixProperties, Tlp, normalise,
};

/// Longest description taken from an event's `info` and an attribute's `comment`.
const MAX_DESCRIPTION_BYTES: usize = 4096;

/// Items gathered before they are published and the checkpoint moves.
const PUBLISH_EVERY: usize = 5_000;

/// Most JSON values read from `manifest.json` or one event file: a million, as for a
/// TAXII page. Text alone does not bound memory (`[]` is two bytes, and 32 or more once
/// read), so a file within `max_response_bytes` may still be refused by this.
const MAX_FILE_VALUES: usize = 1_000_000;

/// The checkpoint kept in the store: each event of the current manifest that was taken,
/// with the timestamp it had and the attributes that became items. Only events the
/// manifest lists are kept, so it is bounded by the manifest (and each entry by its
/// event file, which [`MAX_FILE_VALUES`] bounds).
type Checkpoint = BTreeMap<String, TakenEvent>;

/// Events of the current manifest that could not be fetched or read, by uuid: each is
/// tried again once its retry time comes, after the new and changed events, so that
/// events that keep failing never take the places of the others. Only events the
/// manifest lists are kept, so it is bounded by the manifest as [`Checkpoint`] is.
type Failing = BTreeMap<String, FailingEvent>;

/// Longest wait before an event that keeps failing is tried again, seconds.
const LONGEST_EVENT_RETRY_S: i64 = 3600;

/// One event that could not be fetched or read.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FailingEvent {
    /// Its manifest timestamp when it last failed: a newer one in the manifest makes it
    /// a changed event again, tried at once.
    timestamp: i64,
    /// Failures in a row at that timestamp.
    failures: u32,
    /// When it may be tried again, seconds since the epoch: 1 s after the first failure,
    /// then twice as long after each, up to [`LONGEST_EVENT_RETRY_S`].
    retry_at: i64,
}

impl FailingEvent {
    /// The record of one more failure of an event listed at `timestamp`, at `now_s`.
    fn after(before: Option<&FailingEvent>, timestamp: i64, now_s: i64) -> FailingEvent {
        let failures = match before {
            Some(b) if b.timestamp >= timestamp => b.failures.saturating_add(1),
            _ => 1,
        };
        let wait = 1i64
            .checked_shl(failures.saturating_sub(1).min(32))
            .unwrap_or(LONGEST_EVENT_RETRY_S)
            .min(LONGEST_EVENT_RETRY_S);
        FailingEvent {
            timestamp,
            failures,
            retry_at: now_s.saturating_add(wait),
        }
    }
}

/// What the store keeps for a MISP feed: the events taken and those failing.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
struct PollState {
    events: Checkpoint,
    failing: Failing,
}

impl<'de> serde::Deserialize<'de> for PollState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Checkpoints written before failing events were recorded hold the events alone.
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Stored {
            State {
                events: Checkpoint,
                #[serde(default)]
                failing: Failing,
            },
            Events(Checkpoint),
        }
        Ok(match Stored::deserialize(deserializer)? {
            Stored::State { events, failing } => PollState { events, failing },
            Stored::Events(events) => PollState {
                events,
                failing: Failing::new(),
            },
        })
    }
}

/// One event taken.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
struct TakenEvent {
    /// Its timestamp when it was taken, never past this node's clock then.
    timestamp: i64,
    /// The uuids of its attributes this node publishes an item for; when the event
    /// drops one, or leaves the manifest, those items are revoked.
    items: Vec<String>,
    /// The version taken was dated ahead of this node's clock (the event, or one of its
    /// attributes): the event is read again at each poll, whatever the manifest says,
    /// until nothing in it is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    ahead: bool,
}

impl<'de> serde::Deserialize<'de> for TakenEvent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Checkpoints written before attributes were recorded hold the timestamp alone.
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Timestamp(i64),
            Taken {
                timestamp: i64,
                items: Vec<String>,
                #[serde(default)]
                ahead: bool,
            },
        }
        Ok(match Stored::deserialize(deserializer)? {
            Stored::Timestamp(timestamp) => TakenEvent {
                timestamp,
                items: Vec::new(),
                ahead: false,
            },
            Stored::Taken {
                timestamp,
                items,
                ahead,
            } => TakenEvent {
                timestamp,
                items,
                ahead,
            },
        })
    }
}

/// Reads a file of the feed as JSON, within [`MAX_FILE_VALUES`] values.
fn read_json(body: &[u8]) -> Result<Value, serde_json::Error> {
    crate::interop::strict_json::from_slice_within(body, MAX_FILE_VALUES)
}

/// The draft of a revocation of the item this node made of attribute `uuid`;
/// [`super::publish`] completes it from the item held (its marking, type, tags and
/// content), and passes over an item revoked already.
/// Whether `reason` is one this feed (`feed`) gives the revocations it makes of what its
/// source withdrew (an event gone from the manifest, an attribute withdrawn): only such
/// a revocation is undone when the source gives the attribute again. One the operator
/// made (`entente revoke`) stays until the source changes the attribute.
/// The reason of the revocations of the items of an event gone from the manifest.
fn gone_reason(event: &str, feed: &str) -> String {
    format!("MISP event {event} is no longer in the feed {feed}")
}

/// The reason of the revocation of the item of an attribute the event withdrew.
fn withdrawn_reason(attribute: &str, event: &str, feed: &str) -> String {
    format!("attribute {attribute} of MISP event {event} is withdrawn in the feed {feed}")
}

pub(super) fn withdrawn_by_feed(reason: &str, feed: &str) -> bool {
    (reason.starts_with("MISP event ")
        && reason
            .strip_suffix(feed)
            .is_some_and(|head| head.ends_with(" is no longer in the feed ")))
        || (reason.starts_with("attribute ")
            && reason
                .strip_suffix(feed)
                .is_some_and(|head| head.ends_with(" is withdrawn in the feed ")))
}

fn revocation_draft(origin: &str, uuid: &str, reason: String, now_ms: i64) -> Item {
    Item {
        id: attribute_item_id(origin, uuid),
        modified_ms: now_ms,
        tlp: Tlp::Red,
        tags: Vec::new(),
        kind: ItemKind::Revocation(crate::model::Revocation {
            indicator_type: IndicatorType::StixPattern,
            reason,
            indicator: None,
        }),
    }
}

pub(super) async fn poll(
    feed: &FeedConfig,
    engine: &Arc<Engine>,
    states: &FeedStates,
) -> PollOutcome {
    let mut report = PollReport::default();
    match poll_events(feed, engine, states, &mut report).await {
        Ok(()) => Ok(report),
        Err(e) => Err((e, report)),
    }
}

fn malformed(what: impl std::fmt::Display) -> FeedError {
    FeedError::Malformed(what.to_string())
}

/// A timestamp as MISP writes it: seconds since the epoch, as a string or a number.
fn seconds(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
    .filter(|s| *s > 0 && *s < 32_503_680_000)
}

fn canonical_uuid(text: &str) -> Option<String> {
    if text.len() != 36 {
        return None;
    }
    uuid::Uuid::try_parse(text)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

async fn poll_events(
    feed: &FeedConfig,
    engine: &Arc<Engine>,
    states: &FeedStates,
    report: &mut PollReport,
) -> Result<(), FeedError> {
    let client = Client::new(feed, "application/json")?;
    let base = super::http::shown(&feed.url);
    let base = if base.ends_with('/') {
        base
    } else {
        format!("{base}/")
    };
    let PollState {
        events: mut checkpoint,
        mut failing,
    } = match super::load_checkpoint(engine, &feed.name)? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        None => PollState::default(),
    };
    let manifest_uri: ::http::Uri = format!("{base}manifest.json")
        .parse()
        .map_err(|_| malformed("the manifest URL is not valid"))?;
    let response = client.get(&manifest_uri).await?;
    let manifest: Value = read_json(&response.body)
        .map_err(|e| malformed(format!("manifest.json is not JSON: {e}")))?;
    let Value::Object(manifest) = manifest else {
        return Err(malformed(
            "manifest.json is not an object of event uuids to their info and timestamp",
        ));
    };
    // A timestamp past this node's clock is never trusted as the version held: a source
    // whose clock runs ahead would otherwise hold back, for as long as it is ahead,
    // every later version it dates right. Checkpoints kept before this was checked may
    // hold one: such an event is read again too.
    let now_s = crate::engine::now_ms().div_euclid(1000);
    // New and changed events, then those read again only because they were dated
    // ahead, then those that failed before and whose retry time has come, each group
    // in order of its key: (group, key, listed timestamp, uuid).
    let mut wanted: Vec<(u8, i64, i64, String)> = Vec::new();
    let mut listed = std::collections::HashSet::new();
    for (uuid, entry) in &manifest {
        let Some(uuid) = canonical_uuid(uuid) else {
            report.skip(format!("manifest: {:?} is not an event uuid", shown(uuid)));
            continue;
        };
        let Some(timestamp) = seconds(entry.get("timestamp")) else {
            report.skip(format!("manifest: event {uuid} has no valid timestamp"));
            continue;
        };
        listed.insert(uuid.clone());
        // An event that failed at this timestamp or a later one waits for its retry
        // time, and then comes after the others, longest waiting first.
        if let Some(failed) = failing.get(&uuid).filter(|f| f.timestamp >= timestamp) {
            if failed.retry_at <= now_s {
                wanted.push((2, failed.retry_at, timestamp, uuid));
            }
            continue;
        }
        match checkpoint.get(&uuid) {
            None => wanted.push((0, timestamp, timestamp, uuid)),
            Some(held) if held.timestamp < timestamp => {
                wanted.push((0, timestamp, timestamp, uuid))
            }
            Some(held) if held.ahead || held.timestamp > now_s => {
                wanted.push((1, timestamp, timestamp, uuid))
            }
            Some(_) => {}
        }
    }
    // Failing events no longer listed are forgotten.
    let failing_before = failing.len();
    failing.retain(|uuid, _| listed.contains(uuid));
    let mut failing_changed = failing.len() != failing_before;
    if listed.is_empty() && !manifest.is_empty() {
        return Err(malformed("manifest.json lists no valid event"));
    }
    // A manifest that lists nothing while events were taken is more likely a fault of
    // the server than the withdrawal of every event: nothing is revoked on its word.
    if listed.is_empty() && !checkpoint.is_empty() {
        return Err(malformed(format!(
            "manifest.json lists no event, but {} were taken before; their items are kept until the manifest lists events again",
            checkpoint.len()
        )));
    }
    let origin = engine.policy().node().to_string();
    let mut items: Vec<Item> = Vec::new();
    // Events no longer listed were deleted or unpublished at the source: the items they
    // gave are revoked, then the events are forgotten.
    let mut removed: Vec<String> = Vec::new();
    // Attributes whose items are to be revoked, with the reason; revoked when they are
    // published, unless another event of the feed still gives them then.
    let mut withdrawn: Vec<(String, String)> = Vec::new();
    for (uuid, event) in &checkpoint {
        if listed.contains(uuid) {
            continue;
        }
        for attribute in &event.items {
            withdrawn.push((attribute.clone(), gone_reason(uuid, &feed.name)));
        }
        removed.push(uuid.clone());
    }
    // Oldest changes first, so a poll cut short by its limits resumes in order; events
    // read again only because they were dated ahead, then events that failed before,
    // come last, so they never hold back a change.
    wanted.sort();
    wanted.truncate(feed.max_events_per_poll);

    let mut taken: Vec<(String, TakenEvent)> = Vec::new();
    // Indicators the source gives again after this feed revoked them.
    let mut revive: std::collections::HashSet<ItemId> = std::collections::HashSet::new();
    let mut first_error: Option<FeedError> = None;
    let skew_ms = engine.policy().max_clock_skew_ms();
    for (_, _, listed_timestamp, uuid) in wanted {
        let uri: ::http::Uri = format!("{base}{uuid}.json")
            .parse()
            .map_err(|_| malformed("an event URL is not valid"))?;
        let event = match fetch_event(&client, &uri, &uuid).await {
            Ok(event) => event,
            Err(e) => {
                // This event is tried again once its retry time comes, after the new
                // and changed events; the others go on.
                let failed = FailingEvent::after(
                    failing.get(&uuid),
                    listed_timestamp,
                    crate::engine::now_ms().div_euclid(1000),
                );
                tracing::warn!(
                    feed = %feed.name,
                    event = %uuid,
                    error = %e,
                    failures = failed.failures,
                    retry_in_s = failed.retry_at.saturating_sub(now_s),
                    "MISP event not taken"
                );
                failing.insert(uuid, failed);
                failing_changed = true;
                first_error.get_or_insert(e);
                continue;
            }
        };
        failing_changed |= failing.remove(&uuid).is_some();
        let attributes = event_attributes(&event);
        report.fetched += attributes.len() as u64;
        let held = checkpoint.get(&uuid);
        let before: std::collections::HashSet<String> = held
            .map(|e| e.items.iter().cloned().collect())
            .unwrap_or_default();
        // The timestamp of the version read. A file older than the manifest says (a
        // mirror or cache behind it) is recorded as what it is, so the version the
        // manifest announces is fetched at the next poll rather than never.
        let read_timestamp = seconds(event.get("timestamp")).unwrap_or(listed_timestamp);
        // A file at least as new as the version held speaks for the event as it is now:
        // what it gives that this feed revoked (the event left the manifest, or the
        // attribute was deleted) is live again. An older file (a lagging mirror) does
        // not undo a withdrawal.
        let current = held.is_none_or(|h| read_timestamp >= h.timestamp);
        let now_ms = crate::engine::now_ms();
        let mut ahead_ms = read_timestamp.saturating_mul(1000).saturating_sub(now_ms);
        let mut refused_ahead = 0usize;
        let mut published: Vec<String> = Vec::new();
        for (object, attribute) in attributes {
            let attribute_uuid = attribute
                .get("uuid")
                .and_then(Value::as_str)
                .and_then(canonical_uuid);
            match map_attribute(feed, &origin, &event, object, attribute) {
                // Dated beyond the clock skew: the node would refuse it. It is tried
                // again at the next poll (the event is read again), and the item of
                // its version before, if any, stays as it was.
                Ok(Some(item)) if item.modified_ms > now_ms.saturating_add(skew_ms) => {
                    ahead_ms = ahead_ms.max(item.modified_ms.saturating_sub(now_ms));
                    refused_ahead += 1;
                    published.extend(attribute_uuid.filter(|a| before.contains(a)));
                    report.skip(format!(
                        "event {uuid}: {} is dated ahead of this node's clock; tried again at the next poll",
                        item.id
                    ));
                }
                Ok(Some(item)) => {
                    ahead_ms = ahead_ms.max(item.modified_ms.saturating_sub(now_ms));
                    if current && attribute_uuid.as_ref().is_some_and(|a| !before.contains(a)) {
                        revive.insert(item.id.clone());
                    }
                    items.push(item);
                    published.extend(attribute_uuid);
                }
                Ok(None) => report.skipped += 1,
                Err(Refusal::Unreadable(reason)) => {
                    // Its new version cannot be taken; the item made of the version
                    // before (if any) stays as it was.
                    published.extend(attribute_uuid.filter(|a| before.contains(a)));
                    report.skip(format!("event {uuid}: {reason}"));
                }
                // Not to be shared: not published, so the item made of the version
                // before (if any) is revoked below.
                Err(Refusal::Withheld(reason)) => report.skip(format!("event {uuid}: {reason}")),
            }
        }
        published.sort();
        published.dedup();
        // Attributes the event no longer gives for detection (deleted, no longer
        // to_ids, of a type not mapped, gone) take their items with them.
        for attribute in &before {
            if published.binary_search(attribute).is_err() {
                withdrawn.push((
                    attribute.clone(),
                    withdrawn_reason(attribute, &uuid, &feed.name),
                ));
            }
        }
        if read_timestamp < listed_timestamp {
            tracing::warn!(
                feed = %feed.name,
                event = %uuid,
                file = read_timestamp,
                manifest = listed_timestamp,
                "MISP event file older than its manifest entry; fetched again at the next poll"
            );
        }
        // Dated ahead of this node's clock: the version held is recorded at the clock,
        // not at the date the source gives, and the event is read again at each poll
        // until nothing in it is ahead, so that the version the source dates once its
        // clock is right is taken, and what was refused for the clock skew is tried
        // again. Beyond the skew, the poll reports it.
        let ahead = ahead_ms > 0;
        if ahead {
            tracing::warn!(
                feed = %feed.name,
                event = %uuid,
                ahead_s = ahead_ms / 1000,
                "MISP event dated ahead of this node's clock; read again at each poll"
            );
        }
        if refused_ahead > 0 || ahead_ms > skew_ms {
            first_error.get_or_insert_with(|| {
                malformed(format!(
                    "MISP event {uuid} is dated {} s ahead of this node's clock, more than node.max_clock_skew allows (is the source's clock right?): {refused_ahead} of its attributes are not taken yet; it is read again at each poll",
                    ahead_ms.div_euclid(1000)
                ))
            });
        }
        taken.push((
            uuid,
            TakenEvent {
                timestamp: read_timestamp.min(now_ms.div_euclid(1000)),
                items: published,
                ahead,
            },
        ));
        if items.len() >= PUBLISH_EVERY {
            commit(
                feed,
                engine,
                states,
                &mut checkpoint,
                &failing,
                &mut failing_changed,
                &mut items,
                &mut revive,
                &mut taken,
                &mut removed,
                &mut withdrawn,
                report,
            )
            .await?;
        }
        if report.fetched >= feed.max_objects_per_poll as u64 {
            break;
        }
    }
    commit(
        feed,
        engine,
        states,
        &mut checkpoint,
        &failing,
        &mut failing_changed,
        &mut items,
        &mut revive,
        &mut taken,
        &mut removed,
        &mut withdrawn,
        report,
    )
    .await?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Publishes what was gathered, with the revocations of the attributes `withdrawn` that
/// no event of the feed gives any more (the same attribute may be in several events),
/// then records the events it came from and forgets those `removed` from the manifest.
#[allow(clippy::too_many_arguments)]
async fn commit(
    feed: &FeedConfig,
    engine: &Arc<Engine>,
    states: &FeedStates,
    checkpoint: &mut Checkpoint,
    failing: &Failing,
    failing_changed: &mut bool,
    items: &mut Vec<Item>,
    revive: &mut std::collections::HashSet<ItemId>,
    taken: &mut Vec<(String, TakenEvent)>,
    removed: &mut Vec<String>,
    withdrawn: &mut Vec<(String, String)>,
    report: &mut PollReport,
) -> Result<(), FeedError> {
    if !withdrawn.is_empty() {
        // What the events give once this commit is recorded: those taken in this poll,
        // and the others held that stay in the manifest.
        let gone: std::collections::HashSet<&str> = removed
            .iter()
            .map(String::as_str)
            .chain(taken.iter().map(|(uuid, _)| uuid.as_str()))
            .collect();
        let given: std::collections::HashSet<&str> = checkpoint
            .iter()
            .filter(|(uuid, _)| !gone.contains(uuid.as_str()))
            .map(|(_, event)| event)
            .chain(taken.iter().map(|(_, event)| event))
            .flat_map(|event| event.items.iter().map(String::as_str))
            .collect();
        let origin = engine.policy().node().to_string();
        let now = crate::engine::now_ms();
        for (attribute, reason) in withdrawn.drain(..) {
            if !given.contains(attribute.as_str()) {
                items.push(revocation_draft(&origin, &attribute, reason, now));
            }
        }
    }
    if !items.is_empty() {
        publish_reviving(engine, feed, std::mem::take(items), revive, report).await?;
    }
    revive.clear();
    if taken.is_empty() && removed.is_empty() && !*failing_changed {
        return Ok(());
    }
    for uuid in removed.drain(..) {
        checkpoint.remove(&uuid);
    }
    checkpoint.extend(taken.drain(..));
    #[derive(serde::Serialize)]
    struct Stored<'a> {
        events: &'a Checkpoint,
        failing: &'a Failing,
    }
    let bytes = serde_json::to_vec(&Stored {
        events: checkpoint,
        failing,
    })
    .map_err(|e| FeedError::Publish(format!("checkpoint: {e}")))?;
    super::save_checkpoint(engine, &feed.name, bytes).await?;
    *failing_changed = false;
    let shown = checkpoint_words(checkpoint, failing);
    update(states, &feed.name, |s| {
        s.checkpoint = shown;
    });
    Ok(())
}

/// Where a MISP feed stands, in the words `status` shows.
fn checkpoint_words(events: &Checkpoint, failing: &Failing) -> String {
    let newest = events.values().map(|e| e.timestamp).max().unwrap_or(0);
    format!(
        "{} events held, {} failing, newest timestamp {newest}",
        events.len(),
        failing.len()
    )
}

/// A saved checkpoint in the words `status` shows, or `None` if it does not read.
pub(super) fn describe_checkpoint(bytes: &[u8]) -> Option<String> {
    let state: PollState = serde_json::from_slice(bytes).ok()?;
    Some(checkpoint_words(&state.events, &state.failing))
}

async fn fetch_event(client: &Client, uri: &::http::Uri, uuid: &str) -> Result<Value, FeedError> {
    let response = client.get(uri).await?;
    let mut document: Value = read_json(&response.body)
        .map_err(|e| malformed(format!("event {uuid} is not JSON: {e}")))?;
    let Some(event) = document.get_mut("Event").map(Value::take) else {
        return Err(malformed(format!("event {uuid} has no Event object")));
    };
    if !event.is_object() {
        return Err(malformed(format!("event {uuid}: Event is not an object")));
    }
    if let Some(inner) = event.get("uuid").and_then(Value::as_str) {
        if canonical_uuid(inner).as_deref() != Some(uuid) {
            return Err(malformed(format!(
                "event {uuid} holds another event ({:?})",
                shown(inner)
            )));
        }
    }
    Ok(event)
}

/// The event's attributes and those of its objects, each with the object it is in.
fn event_attributes(event: &Value) -> Vec<(Option<&Value>, &Value)> {
    let mut out: Vec<(Option<&Value>, &Value)> = Vec::new();
    if let Some(list) = event.get("Attribute").and_then(Value::as_array) {
        out.extend(list.iter().map(|attribute| (None, attribute)));
    }
    if let Some(objects) = event.get("Object").and_then(Value::as_array) {
        for object in objects {
            if is_deleted(object.get("deleted")) {
                continue;
            }
            if let Some(list) = object.get("Attribute").and_then(Value::as_array) {
                out.extend(list.iter().map(|attribute| (Some(object), attribute)));
            }
        }
    }
    out
}

/// What one level's MISP `distribution` says of sharing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sharing {
    /// `5` ("inherit event"), absent or `null`: the level above decides.
    Inherit,
    /// `1`, `2` or `3`: a community, connected communities, or all.
    Shared,
    /// `0` ("your organisation only"), `4` (a sharing group), or a value that cannot be
    /// read: not to be shared beyond the source; the words say which.
    Restricted(&'static str),
}

/// Reads one level's `distribution`, as a number or a string of digits.
fn sharing(value: Option<&Value>) -> Sharing {
    let level = match value {
        None | Some(Value::Null) => return Sharing::Inherit,
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(_) => None,
    };
    match level {
        Some(5) => Sharing::Inherit,
        Some(1..=3) => Sharing::Shared,
        Some(0) => Sharing::Restricted("0, your organisation only"),
        Some(4) => Sharing::Restricted("4, a sharing group"),
        _ => Sharing::Restricted("a value that cannot be read, taken as restricted"),
    }
}

/// Why an attribute may not leave the node by MISP's own sharing control: the first of
/// its event, its object and itself whose `distribution` restricts it (each level only
/// narrows the one above; `5` and an absent field inherit).
fn restricted_by_distribution(
    event: &Value,
    object: Option<&Value>,
    attribute: &Value,
) -> Option<String> {
    let levels = [
        ("event", Some(event)),
        ("object", object),
        ("attribute", Some(attribute)),
    ];
    levels.into_iter().find_map(|(level, holder)| {
        match sharing(holder.and_then(|h| h.get("distribution"))) {
            Sharing::Restricted(what) => Some(format!(
                "the {level}'s MISP distribution is {what}: not shared with partners"
            )),
            Sharing::Inherit | Sharing::Shared => None,
        }
    })
}

/// The names in an event's or attribute's `Tag` list other than `tlp:` tags (which give
/// the marking), as given; `Err` when the list or one of its tags cannot be read.
fn tag_names(tags: Option<&Value>, level: &str) -> Result<Vec<String>, String> {
    let list = match tags {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(format!("the {level}'s Tag is not a list")),
    };
    let mut names = Vec::with_capacity(list.len());
    for tag in list {
        let Some(name) = tag
            .as_str()
            .or_else(|| tag.get("name").and_then(Value::as_str))
        else {
            return Err(format!("a tag of the {level} has no name"));
        };
        if name.trim().to_ascii_lowercase().starts_with("tlp:") {
            continue;
        }
        // MISP names often hold spaces (galaxy clusters: `misp-galaxy:threat-actor="Sofacy
        // Group"`), which tags may not: each run of whitespace is written `_`, so the tag
        // is kept (and can be named in a policy) rather than the attribute lost.
        names.push(name.split_whitespace().collect::<Vec<_>>().join("_"));
    }
    Ok(names)
}

/// The most restrictive `tlp:` tag of a `Tag` list. A `tlp:` tag this node has no
/// marking for (MISP's `tlp:ex:chr`, `tlp:ex:nc`, `tlp:unclear`, a misspelling) counts
/// as RED: a marking the mapper cannot represent must never lower what an item is
/// marked, nor leave it to the feed's default.
fn tlp_of(tags: Option<&Value>) -> Option<Tlp> {
    tags?
        .as_array()?
        .iter()
        // `{"name": "tlp:red"}` as MISP writes it, or the bare name some tools write.
        .filter_map(|t| t.as_str().or_else(|| t.get("name").and_then(Value::as_str)))
        .filter_map(|name| {
            let lower = name.trim().to_ascii_lowercase();
            let marking = lower.strip_prefix("tlp:")?;
            Some(marking.parse::<Tlp>().unwrap_or(Tlp::Red))
        })
        .max()
}

/// A MISP flag as MISP and the tools that write feeds give it: `true`/`false`,
/// `1`/`0`, `"1"`/`"0"`, `"true"`/`"false"` (any case); `None` for anything else.
fn flag(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_i64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        Value::String(s) => {
            let s = s.trim();
            if s == "1" || s.eq_ignore_ascii_case("true") {
                Some(true)
            } else if s == "0" || s.eq_ignore_ascii_case("false") {
                Some(false)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Whether a `deleted` field says deleted. Absent or `null` is not; a value that cannot
/// be read is taken as deleted, so that nothing the source may have withdrawn is
/// published (and an item made of it before is revoked).
fn is_deleted(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(value) => flag(value).unwrap_or(true),
    }
}

/// The type and the part of the value an attribute of MISP type `misp_type` gives.
fn indicator_of(misp_type: &str, value: &str) -> Option<(Option<IndicatorType>, String)> {
    let (left, right) = match value.split_once('|') {
        Some((l, r)) => (l.to_owned(), Some(r.to_owned())),
        None => (value.to_owned(), None),
    };
    let ip = |v: &str| {
        if v.contains('/') {
            Some(IndicatorType::Cidr)
        } else if v.contains(':') {
            Some(IndicatorType::Ipv6)
        } else {
            Some(IndicatorType::Ipv4)
        }
    };
    Some(match misp_type {
        "ip-src" | "ip-dst" => (ip(value), value.to_owned()),
        "ip-src|port" | "ip-dst|port" => (ip(&left), left),
        "domain" | "hostname" => (Some(IndicatorType::Domain), value.to_owned()),
        "domain|ip" | "hostname|port" => (Some(IndicatorType::Domain), left),
        "url" => (Some(IndicatorType::Url), value.to_owned()),
        "md5" => (Some(IndicatorType::Md5), value.to_owned()),
        "sha1" => (Some(IndicatorType::Sha1), value.to_owned()),
        "sha256" => (Some(IndicatorType::Sha256), value.to_owned()),
        "filename|md5" => (Some(IndicatorType::Md5), right?),
        "filename|sha1" => (Some(IndicatorType::Sha1), right?),
        "filename|sha256" => (Some(IndicatorType::Sha256), right?),
        "email" | "email-src" | "email-dst" => (Some(IndicatorType::Email), value.to_owned()),
        _ => return None,
    })
}

/// The id of the indicator an attribute becomes: a version-4-form UUID from SHA-256 of
/// this node's id and the attribute's uuid.
pub fn attribute_item_id(origin: &str, attribute_uuid: &str) -> ItemId {
    ItemId::from_uuid_bytes(crate::model::uuid_v4_form(
        "entente/misp-attribute/v1",
        &[origin, attribute_uuid],
    ))
}

/// Why an attribute meant for detection did not become an item.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// This version cannot be read (a bad value, no timestamp): the item of the version
    /// before, if any, stays.
    Unreadable(String),
    /// The source says it is not to be shared as an item of this feed (a restricting
    /// `distribution`, a tag that cannot be carried, a `source:` tag the feed may not
    /// claim): the item of the version before, if any, is revoked.
    Withheld(String),
}

/// One attribute (of `object`, when it is in one) as an item: `Ok(None)` for an
/// attribute not meant for detection or of a type not mapped, `Err` for one that should
/// map but is not taken.
fn map_attribute(
    feed: &FeedConfig,
    origin: &str,
    event: &Value,
    object: Option<&Value>,
    attribute: &Value,
) -> Result<Option<Item>, Refusal> {
    // Not taken unless `to_ids` reads as set; taken as deleted unless `deleted` reads
    // as unset (or is absent).
    let to_ids = attribute.get("to_ids").and_then(flag) == Some(true);
    if !to_ids || is_deleted(attribute.get("deleted")) {
        return Ok(None);
    }
    let misp_type = attribute.get("type").and_then(Value::as_str).unwrap_or("");
    let raw = attribute.get("value").and_then(Value::as_str).unwrap_or("");
    let Some((ty, part)) = indicator_of(misp_type, raw) else {
        return Ok(None);
    };
    let uuid = attribute
        .get("uuid")
        .and_then(Value::as_str)
        .and_then(canonical_uuid)
        .ok_or_else(|| Refusal::Unreadable(format!("a {misp_type} attribute has no valid uuid")))?;
    let at = |what: String| Refusal::Unreadable(format!("attribute {uuid}: {what}"));
    let withheld = |what: String| Refusal::Withheld(format!("attribute {uuid}: {what}"));
    if let Some(why) = restricted_by_distribution(event, object, attribute) {
        return Err(withheld(why));
    }
    // The event's tags, then the attribute's, then the feed's: carried as STIX labels
    // are, so that partners' `allow_tags` and `deny_tags` see them. One that cannot be
    // carried withholds the attribute rather than being dropped.
    let mut labels = tag_names(event.get("Tag"), "event").map_err(&withheld)?;
    labels.extend(tag_names(attribute.get("Tag"), "attribute").map_err(&withheld)?);
    let tags = crate::interop::tags_from_labels(labels, &feed.tags)
        .map_err(|e| withheld(format!("{e}; its tags cannot be carried")))?;
    if let Some(why) = super::unclaimed_source(feed, &tags) {
        return Err(withheld(why));
    }
    let ty = ty.ok_or_else(|| at(format!("no type for {misp_type}")))?;
    let value = normalise(ty, &part).map_err(|e| at(e.to_string()))?;
    let event_seconds = seconds(event.get("timestamp")).unwrap_or(0);
    let seconds = seconds(attribute.get("timestamp"))
        .unwrap_or(0)
        .max(event_seconds);
    if seconds == 0 {
        return Err(at("no timestamp on the attribute or its event".into()));
    }
    let modified_ms = seconds * 1000;
    let tlp = match (tlp_of(event.get("Tag")), tlp_of(attribute.get("Tag"))) {
        (Some(a), Some(b)) => a.max(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => feed.tlp.ok_or_else(|| {
            at("the event has no tlp: tag and the feed has no tlp default".into())
        })?,
    };
    let mut description = event
        .get("info")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if let Some(comment) = attribute.get("comment").and_then(Value::as_str) {
        if !comment.is_empty() {
            if !description.is_empty() {
                description.push_str(" — ");
            }
            description.push_str(comment);
        }
    }
    truncate(&mut description, MAX_DESCRIPTION_BYTES);
    let item = Item {
        id: attribute_item_id(origin, &uuid),
        modified_ms,
        tlp,
        tags,
        kind: ItemKind::Indicator(Indicator {
            indicator_type: ty,
            value,
            description,
            confidence: 0,
            kill_chain_phases: Vec::new(),
            valid_from_ms: modified_ms,
            valid_until_ms: None,
            properties: StixProperties::default(),
        }),
    };
    item.validate().map_err(|e| at(e.to_string()))?;
    Ok(Some(item))
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
}

fn shown(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_types_give_the_part_that_is_an_indicator() {
        assert_eq!(
            indicator_of("ip-dst|port", "198.51.100.7|443"),
            Some((Some(IndicatorType::Ipv4), "198.51.100.7".into()))
        );
        assert_eq!(
            indicator_of("filename|sha256", "a.exe|ab"),
            Some((Some(IndicatorType::Sha256), "ab".into()))
        );
        assert_eq!(
            indicator_of("ip-src", "2001:db8::1"),
            Some((Some(IndicatorType::Ipv6), "2001:db8::1".into()))
        );
        assert_eq!(indicator_of("filename", "a.exe"), None);
        assert_eq!(indicator_of("filename|md5", "a.exe"), None);
    }

    #[test]
    fn only_the_feeds_own_withdrawals_are_undone() {
        let event = "5d1c0a3e-1111-4e11-8a11-000000000001";
        let attribute = "6e2d1b4f-0000-4000-8000-000000000001";
        assert!(withdrawn_by_feed(&gone_reason(event, "m-a"), "m-a"));
        assert!(withdrawn_by_feed(
            &withdrawn_reason(attribute, event, "m-a"),
            "m-a"
        ));
        // Another feed's, or the operator's.
        assert!(!withdrawn_by_feed(&gone_reason(event, "m-a"), "m-b"));
        assert!(!withdrawn_by_feed(&gone_reason(event, "xm-a"), "m-a"));
        assert!(!withdrawn_by_feed("a sinkhole, not the actor's", "m-a"));
        assert!(!withdrawn_by_feed("", "m-a"));
    }

    #[test]
    fn the_most_restrictive_tlp_tag_counts_and_white_is_clear() {
        let tags = serde_json::json!([{"name": "tlp:white"}, {"name": "osint"}]);
        assert_eq!(tlp_of(Some(&tags)), Some(Tlp::Clear));
        let tags = serde_json::json!([{"name": "TLP:GREEN"}, {"name": "tlp:amber+strict"}, {"name": "PAP:RED"}]);
        assert_eq!(tlp_of(Some(&tags)), Some(Tlp::AmberStrict));
        assert_eq!(tlp_of(None), None);
        let tags = serde_json::json!([{"name": "osint"}]);
        assert_eq!(tlp_of(Some(&tags)), None);
    }

    #[test]
    fn a_tag_written_as_a_bare_name_counts() {
        let tags = serde_json::json!(["tlp:red", {"name": "tlp:clear"}]);
        assert_eq!(tlp_of(Some(&tags)), Some(Tlp::Red));
        let tags = serde_json::json!(["TLP:AMBER"]);
        assert_eq!(tlp_of(Some(&tags)), Some(Tlp::Amber));
    }

    #[test]
    fn a_tlp_tag_without_a_marking_here_counts_as_red() {
        for name in [
            "tlp:ex:chr",
            "TLP:EX:NC",
            "tlp:unclear",
            "tlp:",
            "tlp:greeen",
        ] {
            let tags = serde_json::json!([{"name": "tlp:clear"}, {"name": name}]);
            assert_eq!(tlp_of(Some(&tags)), Some(Tlp::Red), "{name}");
        }
    }

    #[test]
    fn distribution_restricts_at_any_level_and_fails_closed() {
        use serde_json::json;
        for (value, expected) in [
            (json!("0"), false),
            (json!(0), false),
            (json!("4"), false),
            (json!(" 1 "), true),
            (json!(2), true),
            (json!("3"), true),
            (json!("5"), true),
            (json!(null), true),
            (json!("all"), false),
            (json!(6), false),
            (json!(-1), false),
            (json!(true), false),
        ] {
            let event = json!({"distribution": value});
            let shared = restricted_by_distribution(&event, None, &json!({})).is_none();
            assert_eq!(shared, expected, "{value}");
        }
        let open = json!({"distribution": "3"});
        let org = json!({"distribution": "0"});
        let inherit = json!({"distribution": "5"});
        assert!(restricted_by_distribution(&open, Some(&inherit), &inherit).is_none());
        assert!(restricted_by_distribution(&open, None, &json!({})).is_none());
        let why = restricted_by_distribution(&open, Some(&org), &inherit).unwrap();
        assert!(
            why.contains("object") && why.contains("organisation only"),
            "{why}"
        );
        // A narrower level below a restricted one does not widen it.
        let why = restricted_by_distribution(&org, None, &open).unwrap();
        assert!(why.contains("event"), "{why}");
    }

    #[test]
    fn tags_are_read_without_tlp_and_an_unreadable_one_is_an_error() {
        use serde_json::json;
        let tags = json!([{"name": "TLP:AMBER"}, {"name": "pii"}, "PAP:RED"]);
        assert_eq!(
            tag_names(Some(&tags), "event"),
            Ok(vec!["pii".to_owned(), "PAP:RED".to_owned()])
        );
        assert_eq!(tag_names(None, "event"), Ok(Vec::new()));
        assert!(tag_names(Some(&json!({"name": "pii"})), "event").is_err());
        assert!(tag_names(Some(&json!([{"id": "1"}])), "attribute").is_err());
        assert!(tag_names(Some(&json!([7])), "attribute").is_err());
    }

    #[test]
    fn deleted_reads_every_form_and_fails_closed() {
        use serde_json::json;
        for deleted in [
            json!(true),
            json!("1"),
            json!(1),
            json!("true"),
            json!(" TRUE "),
        ] {
            assert!(is_deleted(Some(&deleted)), "{deleted}");
        }
        for unreadable in [
            json!("yes"),
            json!(""),
            json!(2),
            json!(1.5),
            json!([]),
            json!({}),
        ] {
            assert!(is_deleted(Some(&unreadable)), "{unreadable}");
        }
        for live in [
            json!(false),
            json!("0"),
            json!(0),
            json!("false"),
            json!(null),
        ] {
            assert!(!is_deleted(Some(&live)), "{live}");
        }
        assert!(!is_deleted(None));
    }

    #[test]
    fn checkpoints_without_the_ahead_mark_still_read() {
        let old: Checkpoint =
            serde_json::from_str(r#"{"a":5,"b":{"timestamp":6,"items":["x"]}}"#).unwrap();
        assert_eq!(old["a"].timestamp, 5);
        assert!(!old["b"].ahead);
        let marked = TakenEvent {
            timestamp: 7,
            items: Vec::new(),
            ahead: true,
        };
        let text = serde_json::to_string(&marked).unwrap();
        assert_eq!(serde_json::from_str::<TakenEvent>(&text).unwrap(), marked);
        let plain = serde_json::to_string(&TakenEvent::default()).unwrap();
        assert!(!plain.contains("ahead"), "{plain}");
    }

    #[test]
    fn poll_states_written_before_failing_events_still_read() {
        let old: PollState =
            serde_json::from_str(r#"{"a":5,"b":{"timestamp":6,"items":["x"]}}"#).unwrap();
        assert_eq!(old.events["b"].items, ["x"]);
        assert!(old.failing.is_empty());
        let empty: PollState = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, PollState::default());
        let mut state = PollState::default();
        state.events.insert("a".into(), TakenEvent::default());
        state
            .failing
            .insert("b".into(), FailingEvent::after(None, 10, 100));
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<PollState>(&text).unwrap(), state);
    }

    #[test]
    fn a_failing_event_waits_longer_after_each_failure_up_to_an_hour() {
        let first = FailingEvent::after(None, 10, 1000);
        assert_eq!((first.failures, first.retry_at), (1, 1001));
        let second = FailingEvent::after(Some(&first), 10, 1001);
        assert_eq!((second.failures, second.retry_at), (2, 1003));
        let mut last = second;
        for _ in 0..100 {
            last = FailingEvent::after(Some(&last), 10, 5000);
        }
        assert_eq!(last.retry_at, 5000 + LONGEST_EVENT_RETRY_S);
        // A newer version in the manifest starts the count again.
        let changed = FailingEvent::after(Some(&last), 11, 6000);
        assert_eq!((changed.failures, changed.retry_at), (1, 6001));
    }

    #[test]
    fn attribute_ids_are_stable_version_4_uuids() {
        let a = attribute_item_id("n1", "5f0e1c4e-0000-4000-8000-000000000001");
        assert_eq!(
            a,
            attribute_item_id("n1", "5f0e1c4e-0000-4000-8000-000000000001")
        );
        assert_ne!(
            a,
            attribute_item_id("n2", "5f0e1c4e-0000-4000-8000-000000000001")
        );
        let uuid = uuid::Uuid::parse_str(&a.as_str()[11..]).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
    }
}
