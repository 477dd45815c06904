//! TAXII 2.1: `GET <collection>/objects/?limit=N&added_after=T[&next=X]`, following
//! `more`/`next` within a poll with the same `added_after` (the specification asks the
//! other parameters to stay the same while paging), and moving the checkpoint to the
//! page's `X-TAXII-Date-Added-Last` once the page's items are durable, but never past a
//! page holding an object dated ahead of this node's clock by up to a day (read again
//! until the clock allows it). Objects go through the STIX importer, which keeps every
//! STIX property of an indicator and skips other object types.

use std::sync::Arc;

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::http::Client;
use super::{FeedError, FeedStates, PollOutcome, PollReport, publish, update};
use crate::config::FeedConfig;
use crate::engine::{Engine, now_ms};
use crate::interop::{Defaults, parse_feed_page};

/// The TAXII 2.1 media type.
const TAXII_MEDIA_TYPE: &str = "application/taxii+json;version=2.1";

/// Longest `next` token or timestamp taken from a server.
const MAX_TOKEN_BYTES: usize = 1024;

/// Most pages followed in one poll (a server that pages forever is cut off).
const MAX_PAGES_PER_POLL: usize = 10_000;

/// Furthest ahead of this node's clock an object may be dated and still hold the
/// checkpoint before its page until the clock allows it: one day. An object dated
/// further ahead is not taken; the poll fails naming it, and then goes on.
const MAX_AHEAD_HELD_MS: i64 = 86_400_000;

/// The checkpoint kept in the store.
#[derive(serde::Serialize, Deserialize, Default)]
struct Checkpoint {
    /// The last `X-TAXII-Date-Added-Last` whose objects are held.
    added_after: Option<String>,
}

/// A saved checkpoint in the words `status` shows, or `None` if it holds no position.
pub(super) fn describe_checkpoint(bytes: &[u8]) -> Option<String> {
    let checkpoint: Checkpoint = serde_json::from_slice(bytes).ok()?;
    checkpoint
        .added_after
        .map(|last| format!("added_after {last}"))
}

/// A TAXII envelope; other members are ignored.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    more: Option<bool>,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    objects: Option<Vec<serde_json::Value>>,
}

/// Most JSON values read from one page: a thousand objects of a thousand values each.
/// Text alone does not bound memory (`[]` is two bytes, and 32 or more once read).
const MAX_PAGE_VALUES: usize = 1_000_000;

/// Reads a page strictly (a name given twice in one object, or more than
/// [`MAX_PAGE_VALUES`] values, makes it malformed), then as an envelope.
fn envelope(body: &[u8]) -> Result<Envelope, String> {
    let value = crate::interop::strict_json::from_slice_within(body, MAX_PAGE_VALUES)
        .map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

pub(super) async fn poll(
    feed: &FeedConfig,
    engine: &Arc<Engine>,
    states: &FeedStates,
) -> PollOutcome {
    let mut report = PollReport::default();
    let mut far_ahead = None;
    match poll_pages(feed, engine, states, &mut report, &mut far_ahead).await {
        // Objects dated more than a day ahead were not taken: the poll took the rest
        // and fails, saying so.
        Ok(()) => match far_ahead {
            Some(e) => Err((e, report)),
            None => Ok(report),
        },
        Err(e) => Err((e, report)),
    }
}

/// The object of a page dated furthest ahead of this node's clock beyond the clock skew
/// (by at most [`MAX_AHEAD_HELD_MS`]), which publishing would refuse yet: its id and
/// how far ahead it is, ms.
struct Ahead {
    id: String,
    ahead_ms: i64,
}

/// Sets aside the items of a page dated beyond the clock skew, which `Engine::sign`
/// would refuse. Those dated at most [`MAX_AHEAD_HELD_MS`] ahead are only early: the
/// one furthest ahead is returned, and the page is to be read again until the clock
/// allows them.
/// Those dated further ahead are skipped, counted with the reason, and the poll's error
/// (`far_ahead`) names the first.
fn set_aside_ahead(
    items: &mut Vec<crate::model::Item>,
    skew_ms: i64,
    report: &mut PollReport,
    far_ahead: &mut Option<FeedError>,
) -> Option<Ahead> {
    let now = now_ms();
    let limit = now.saturating_add(skew_ms);
    let mut early: Option<Ahead> = None;
    items.retain(|item| {
        if item.modified_ms <= limit {
            return true;
        }
        let ahead_ms = item.modified_ms.saturating_sub(now);
        if ahead_ms <= MAX_AHEAD_HELD_MS {
            if early.as_ref().is_none_or(|e| e.ahead_ms < ahead_ms) {
                early = Some(Ahead {
                    id: item.id.to_string(),
                    ahead_ms,
                });
            }
        } else {
            let why = format!(
                "{} is dated {} s ahead of this node's clock, more than a day: not taken (is the source's clock right?)",
                item.id,
                ahead_ms.div_euclid(1000)
            );
            far_ahead.get_or_insert_with(|| FeedError::Malformed(why.clone()));
            report.skip(why);
        }
        false
    });
    early
}

async fn poll_pages(
    feed: &FeedConfig,
    engine: &Arc<Engine>,
    states: &FeedStates,
    report: &mut PollReport,
    far_ahead: &mut Option<FeedError>,
) -> Result<(), FeedError> {
    let client = Client::new(feed, TAXII_MEDIA_TYPE)?;
    let skew_ms = engine.policy().max_clock_skew_ms();
    let mut checkpoint: Checkpoint = match super::load_checkpoint(engine, &feed.name)? {
        // A checkpoint that does not read is started afresh: items already held are
        // recognised and skipped.
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        None => Checkpoint::default(),
    };
    let mut added_after = checkpoint.added_after.clone();
    let started_from = checkpoint.added_after.clone();
    let mut next: Option<String> = None;
    // The last date added of the pages taken so far. Several objects may share one date
    // added, and a page may end inside such a group: the checkpoint moves to it only
    // once the next page starts later, or when there is no next page, so that resuming
    // with `added_after` (which is exclusive) never skips the rest of a group.
    let mut pending: Option<String> = None;
    let mut over_limit = false;
    let origin = engine.policy().node().to_string();
    for _ in 0..MAX_PAGES_PER_POLL {
        let uri = page_uri(
            &feed.url,
            feed.page_size,
            added_after.as_deref(),
            next.as_deref(),
        )?;
        let response = client.get(&uri).await?;
        check_media_type(&response.headers)?;
        let envelope: Envelope = envelope(&response.body).map_err(|e| {
            FeedError::Malformed(format!(
                "the answer of {} is not a TAXII envelope: {e}",
                super::http::shown(&feed.url)
            ))
        })?;
        let date_added_first = date_header(&response.headers, "x-taxii-date-added-first")?;
        let date_added_last = date_header(&response.headers, "x-taxii-date-added-last")?;
        if let Some(held) = &pending {
            if later_than(date_added_first.as_deref(), held) {
                let confirmed = held.clone();
                save(feed, engine, states, &mut checkpoint, &confirmed).await?;
                pending = None;
                if over_limit {
                    // The limit was reached at a boundary: this page waits for the
                    // next poll, which starts from the checkpoint just saved.
                    return Ok(());
                }
            }
        }
        let objects = envelope.objects.unwrap_or_default();
        let count = objects.len() as u64;
        report.fetched += count;
        let mut early: Option<Ahead> = None;
        if !objects.is_empty() {
            let defaults = Defaults {
                tlp: feed.tlp,
                indicator_type: None,
                tags: feed.tags.clone(),
                origin: Some(origin.clone()),
            };
            let text = serde_json::json!({
                "type": "bundle",
                "id": format!("bundle--{}", uuid::Uuid::new_v4()),
                "objects": objects,
            })
            .to_string();
            let parsed =
                tokio::task::spawn_blocking(move || parse_feed_page(&text, &defaults, now_ms()))
                    .await
                    .map_err(|e| FeedError::Publish(format!("task failed: {e}")))?
                    // A page not read at all fails the poll: the checkpoint stays before
                    // it, so its objects are fetched again rather than passed over.
                    .map_err(|e| {
                        FeedError::Malformed(format!(
                            "a page of {} was not read, the checkpoint stays before it: {e}",
                            super::http::shown(&feed.url)
                        ))
                    })?;
            let items = parsed.items.len() as u64;
            for error in &parsed.errors {
                report.skip(error.to_string());
            }
            // Objects of other types (identities, relationships, marking definitions)
            // are not indicators: counted as skipped without a reason each.
            report.skipped += count.saturating_sub(items + parsed.errors.len() as u64);
            let mut items = parsed.items;
            early = set_aside_ahead(&mut items, skew_ms, report, far_ahead);
            publish(engine, feed, items, report).await?;
        }
        if let Some(early) = early {
            // An object dated ahead, but by no more than a day, is only early (a source
            // whose clock runs fast): the rest of the page is taken, and the checkpoint
            // stays before the page, so the next poll reads it again (what it took is
            // recognised as held) until the clock allows the object. The pages after
            // it wait as well.
            tracing::warn!(
                feed = %feed.name,
                object = %early.id,
                ahead_s = early.ahead_ms / 1000,
                "TAXII object dated ahead of this node's clock; its page is read again at each poll"
            );
            return Err(FeedError::Malformed(format!(
                "TAXII object {} is dated {} s ahead of this node's clock, more than node.max_clock_skew allows (is the source's clock right?): not taken yet; the checkpoint stays before its page, which is read again at each poll",
                early.id,
                early.ahead_ms.div_euclid(1000)
            )));
        }
        // This page's items are durable now. A page that ends later than the date held
        // also shows a boundary, without `X-TAXII-Date-Added-First`: the listing is
        // sorted by date added, so the rest of the held date's group came in this page,
        // before its later objects. Every object dated up to the held date is taken.
        if let Some(held) = &pending {
            if later_than(date_added_last.as_deref(), held) {
                let confirmed = held.clone();
                save(feed, engine, states, &mut checkpoint, &confirmed).await?;
                pending = None;
                if over_limit {
                    // This page's later objects are fetched again by the next poll,
                    // which starts from the checkpoint just saved, and passed over as
                    // held.
                    return Ok(());
                }
            }
        }
        if date_added_last.is_some() {
            pending = date_added_last.clone();
        }
        if envelope.more != Some(true) || count == 0 {
            // Nothing after this page: what it ends with is complete.
            if let Some(last) = pending {
                save(feed, engine, states, &mut checkpoint, &last).await?;
            }
            return Ok(());
        }
        if report.fetched >= feed.max_objects_per_poll as u64 {
            // The rest waits for the next poll, once the checkpoint is at a boundary.
            over_limit = true;
        }
        // A server that never comes to a boundary (no X-TAXII-Date-Added-Last, or every
        // page dated alike) would be paged for MAX_PAGES_PER_POLL pages, each taken in:
        // past twice the limit the poll ends, the checkpoint where it was.
        if report.fetched >= (feed.max_objects_per_poll as u64).saturating_mul(2) {
            return Err(FeedError::Malformed(format!(
                "no page boundary (a page dated later than the last) within {} objects, twice max_objects_per_poll; the checkpoint stays",
                report.fetched
            )));
        }
        match envelope.next {
            Some(token) if !token.is_empty() => {
                if token.len() > MAX_TOKEN_BYTES {
                    return Err(FeedError::Malformed(format!(
                        "the next token is longer than {MAX_TOKEN_BYTES} bytes"
                    )));
                }
                next = Some(token);
            }
            // No token: page on by date added, from this page's last.
            _ => {
                let Some(last) = pending.clone() else {
                    return Err(FeedError::Malformed(
                        "the server says there is more but gives neither next nor X-TAXII-Date-Added-Last".into(),
                    ));
                };
                if added_after.as_deref() == Some(last.as_str()) {
                    return Err(FeedError::Malformed(
                        "the server says there is more but its next page starts where the last one did".into(),
                    ));
                }
                save(feed, engine, states, &mut checkpoint, &last).await?;
                pending = None;
                if over_limit {
                    return Ok(());
                }
                added_after = Some(last);
                next = None;
            }
        }
    }
    // Still more after the most pages one poll follows. When the checkpoint moved, the
    // rest waits for the next poll; when it did not, the server pages without end (the
    // same pages again, or never a boundary) and the poll fails, saying so.
    if checkpoint.added_after != started_from {
        return Ok(());
    }
    Err(FeedError::Malformed(format!(
        "the server still says there is more after {MAX_PAGES_PER_POLL} pages, and no page boundary was found in them; the checkpoint stays"
    )))
}

/// Moves the checkpoint to `last` (when it is later than the one held) and writes it.
async fn save(
    feed: &FeedConfig,
    engine: &Arc<Engine>,
    states: &FeedStates,
    checkpoint: &mut Checkpoint,
    last: &str,
) -> Result<(), FeedError> {
    // A date added ahead of this node's clock (a server whose clock runs ahead) is not
    // taken as the checkpoint: what the server adds once its clock is right would be
    // dated before it and never fetched. The checkpoint stops at the node's clock, so
    // what is dated ahead is fetched again (and recognised as held) until then.
    let now_ns = i128::from(now_ms()) * 1_000_000;
    let clamped;
    let last = match parse_time(last) {
        Some(t) if t > now_ns => {
            clamped = OffsetDateTime::from_unix_timestamp_nanos(now_ns)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
                .ok_or_else(|| FeedError::Publish("the clock cannot be written".into()))?;
            tracing::warn!(feed = %feed.name, date_added = %last, "the feed dates objects ahead of this node's clock; the checkpoint stops at the clock");
            clamped.as_str()
        }
        _ => last,
    };
    let newer = match checkpoint.added_after.as_deref().and_then(parse_time) {
        Some(held) => parse_time(last).is_some_and(|t| t > held),
        None => true,
    };
    if !newer {
        return Ok(());
    }
    checkpoint.added_after = Some(last.to_owned());
    let bytes = serde_json::to_vec(&checkpoint)
        .map_err(|e| FeedError::Publish(format!("checkpoint: {e}")))?;
    super::save_checkpoint(engine, &feed.name, bytes).await?;
    update(states, &feed.name, |s| {
        s.checkpoint = format!("added_after {last}");
    });
    Ok(())
}

/// A date header of a TAXII answer: absent, or a timestamp.
fn date_header(headers: &::http::HeaderMap, name: &str) -> Result<Option<String>, FeedError> {
    match headers.get(name).map(|v| v.to_str().map(str::to_owned)) {
        None => Ok(None),
        Some(Ok(text)) if text.len() <= MAX_TOKEN_BYTES && parse_time(&text).is_some() => {
            Ok(Some(text))
        }
        Some(_) => Err(FeedError::Malformed(format!("{name} is not a timestamp"))),
    }
}

/// Whether `date` (a header's, if given) is later than `held`; `false` when either does
/// not read as a time.
fn later_than(date: Option<&str>, held: &str) -> bool {
    match (date.and_then(parse_time), parse_time(held)) {
        (Some(date), Some(held)) => date > held,
        _ => false,
    }
}

fn parse_time(text: &str) -> Option<i128> {
    OffsetDateTime::parse(text.trim(), &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos())
}

/// A TAXII answer must be JSON; the TAXII media type is expected, plain JSON is taken.
fn check_media_type(headers: &::http::HeaderMap) -> Result<(), FeedError> {
    let Some(value) = headers.get(::http::header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or_default().to_ascii_lowercase();
    let media = text.split(';').next().unwrap_or_default().trim();
    if media == "application/taxii+json" || media == "application/json" {
        return Ok(());
    }
    Err(FeedError::Malformed(format!(
        "the answer is {media:?}, not application/taxii+json"
    )))
}

fn page_uri(
    base: &::http::Uri,
    limit: usize,
    added_after: Option<&str>,
    next: Option<&str>,
) -> Result<::http::Uri, FeedError> {
    let mut query = format!("limit={limit}");
    if let Some(t) = added_after {
        query.push_str("&added_after=");
        query.push_str(&percent_encode(t));
    }
    if let Some(n) = next {
        query.push_str("&next=");
        query.push_str(&percent_encode(n));
    }
    let text = format!("{}?{query}", super::http::shown(base));
    text.parse()
        .map_err(|_| FeedError::Malformed("the next token cannot be sent in a URL".into()))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(super) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_uris_keep_the_path_and_encode_the_parameters() {
        let base: ::http::Uri = "http://127.0.0.1:5000/api1/collections/c/objects/"
            .parse()
            .unwrap();
        let uri = page_uri(
            &base,
            50,
            Some("2026-01-01T00:00:00.123456Z"),
            Some("a b+c"),
        )
        .unwrap();
        assert_eq!(
            uri.to_string(),
            "http://127.0.0.1:5000/api1/collections/c/objects/?limit=50&added_after=2026-01-01T00%3A00%3A00.123456Z&next=a%20b%2Bc"
        );
    }

    fn dated(n: u8, modified_ms: i64) -> crate::model::Item {
        use crate::model::{Indicator, IndicatorType, Item, ItemId, ItemKind, Tlp};
        let id = format!("indicator--1b1b7a7e-1111-4c1c-8a8a-{n:012}");
        Item {
            id: ItemId::parse(&id).unwrap(),
            modified_ms,
            tlp: Tlp::Green,
            tags: Vec::new(),
            kind: ItemKind::Indicator(Indicator {
                indicator_type: IndicatorType::Domain,
                value: format!("d{n}.example"),
                description: String::new(),
                confidence: 0,
                kill_chain_phases: Vec::new(),
                valid_from_ms: modified_ms,
                valid_until_ms: None,
                properties: Default::default(),
            }),
        }
    }

    #[test]
    fn objects_dated_ahead_are_set_aside_and_only_those_beyond_a_day_are_skipped() {
        let now = now_ms();
        let skew = 60_000;
        let mut items = vec![
            dated(1, now - 1000),
            dated(2, now + skew / 2),
            dated(3, now + 10 * skew),
            dated(4, now + 5 * skew),
        ];
        let mut report = PollReport::default();
        let mut far = None;
        let early = set_aside_ahead(&mut items, skew, &mut report, &mut far).unwrap();
        assert_eq!(items.len(), 2);
        assert!(early.id.ends_with("000000000003"), "{}", early.id);
        assert!(early.ahead_ms > 9 * skew);
        assert_eq!(report.skipped, 0);
        assert!(far.is_none());

        let mut items = vec![dated(5, now), dated(6, now + 2 * MAX_AHEAD_HELD_MS)];
        let early = set_aside_ahead(&mut items, skew, &mut report, &mut far);
        assert!(early.is_none());
        assert_eq!(items.len(), 1);
        assert_eq!(report.skipped, 1);
        let why = far.unwrap().to_string();
        assert!(
            why.contains("000000000006") && why.contains("more than a day"),
            "{why}"
        );
    }

    #[test]
    fn only_json_media_types_are_taken() {
        let mut headers = ::http::HeaderMap::new();
        headers.insert(
            ::http::header::CONTENT_TYPE,
            "application/taxii+json;version=2.1".parse().unwrap(),
        );
        assert!(check_media_type(&headers).is_ok());
        headers.insert(::http::header::CONTENT_TYPE, "text/html".parse().unwrap());
        assert!(check_media_type(&headers).is_err());
    }
}
