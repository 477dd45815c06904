//! Feeds in, against a feed server that is broken or hostile: dates that lie, MISP
//! events that share attributes or lag behind their manifest, servers that page without
//! end. Each test serves the feed itself on a loopback port and runs a node in-process.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entente::client::NodeClient;
use entente::wire::item;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::Pki;
use common::feeds::{feed_status, items_tagged, wait_within};

/// Upper bound for anything the tests wait for.
const DEADLINE: Duration = Duration::from_secs(60);

/// The OASIS TLP 2.0 GREEN marking definition.
const TLP_GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";

// ---------------------------------------------------------------------------------
// A loopback HTTP/1.1 server: one answer per connection, made by the test's handler
// from the request target (path and query).

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(body: &serde_json::Value) -> Self {
        Answer {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    fn taxii(body: &serde_json::Value, first: Option<&str>, last: Option<&str>) -> Self {
        let mut headers = vec![(
            "Content-Type".to_owned(),
            "application/taxii+json;version=2.1".to_owned(),
        )];
        if let Some(first) = first {
            headers.push(("X-TAXII-Date-Added-First".into(), first.into()));
        }
        if let Some(last) = last {
            headers.push(("X-TAXII-Date-Added-Last".into(), last.into()));
        }
        Answer {
            status: 200,
            headers,
            body: body.to_string().into_bytes(),
        }
    }

    fn not_found() -> Self {
        Answer {
            status: 404,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

type Handler = Arc<dyn Fn(&str) -> Answer + Send + Sync>;

/// Serves `handler` on a loopback port; returns `http://127.0.0.1:PORT`.
async fn serve(handler: Handler) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let answer = handler(&target);
                let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", answer.status);
                for (name, value) in &answer.headers {
                    out.push_str(&format!("{name}: {value}\r\n"));
                }
                out.push_str(&format!("Content-Length: {}\r\n\r\n", answer.body.len()));
                let mut bytes = out.into_bytes();
                bytes.extend_from_slice(&answer.body);
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// The value of query parameter `name` in `target`, percent-decoded.
fn query_param(target: &str, name: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' && at + 3 <= bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[at + 1..at + 3], 16) {
                out.push(b);
                at += 3;
                continue;
            }
        }
        out.push(bytes[at]);
        at += 1;
    }
    String::from_utf8(out).unwrap()
}

// ---------------------------------------------------------------------------------
// Nodes and what they hold.

fn node_config(pki: &Pki, id: &entente::NodeId, name: &str, feeds: &str) -> std::path::PathBuf {
    let data = pki.path().join(format!("data-{name}"));
    let text = format!("{}{feeds}", common::node_section(pki, id, &data));
    let path = pki.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The items tagged `tag` by value (a revocation by the value it revokes), with whether
/// each is a revocation.
async fn by_value(client: &NodeClient, tag: &str) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    for stored in items_tagged(client, tag).await.into_values() {
        let item = stored.item.as_ref().unwrap();
        let (value, revoked) = match item.kind.as_ref().unwrap() {
            item::Kind::Indicator(i) => (i.value.clone(), false),
            item::Kind::Revocation(r) => (
                r.indicator
                    .as_ref()
                    .map(|i| i.value.clone())
                    .unwrap_or_default(),
                true,
            ),
            other => panic!("unexpected {other:?}"),
        };
        out.insert(value, revoked);
    }
    out
}

async fn wait_until<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_within(what, DEADLINE, check).await
}

/// Polls counted in the feed's status.
async fn polls(client: &NodeClient, feed: &str) -> u64 {
    feed_status(client, feed).await.polls
}

/// Waits until the feed has ended `n` more polls than `from`.
async fn wait_polls(client: &NodeClient, feed: &str, from: u64, n: u64) {
    wait_until("more polls", || async move {
        (polls(client, feed).await >= from + n).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------
// TAXII.

fn stix_indicator(n: u32, ip: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "indicator",
        "spec_version": "2.1",
        "id": format!("indicator--7d3e2c1a-0000-4000-8000-{n:012}"),
        "created": "2026-11-01T10:00:00.000Z",
        "modified": "2026-11-01T10:00:00.000Z",
        "name": format!("indicator {n}"),
        "pattern": format!("[ipv4-addr:value = '{ip}']"),
        "pattern_type": "stix",
        "valid_from": "2026-11-01T10:00:00Z",
        "object_marking_refs": [TLP_GREEN],
    })
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn parse_rfc3339(text: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
}

/// A TAXII collection: objects with their date added, answered by `added_after` (no
/// `next` tokens; the whole rest in one page).
#[derive(Clone, Default)]
struct Collection {
    objects: Arc<Mutex<Vec<(time::OffsetDateTime, serde_json::Value)>>>,
}

impl Collection {
    fn add(&self, date_added: time::OffsetDateTime, object: serde_json::Value) {
        let mut objects = self.objects.lock().unwrap();
        objects.push((date_added, object));
        objects.sort_by_key(|(at, _)| *at);
    }

    fn answer(&self, target: &str) -> Answer {
        let after = query_param(target, "added_after").map(|t| parse_rfc3339(&t));
        let objects = self.objects.lock().unwrap();
        let page: Vec<_> = objects
            .iter()
            .filter(|(at, _)| after.is_none_or(|after| *at > after))
            .collect();
        let first = page.first().map(|(at, _)| rfc3339(*at));
        let last = page.last().map(|(at, _)| rfc3339(*at));
        let body = serde_json::json!({
            "more": false,
            "objects": page.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>(),
        });
        Answer::taxii(&body, first.as_deref(), last.as_deref())
    }
}

/// A server whose clock is wrong dates an object years ahead. Its date added becomes
/// the checkpoint, so once its clock is right again every object it adds (dated before
/// that) falls before `added_after` and is never fetched. The checkpoint must not move
/// past the node's own clock: objects dated ahead are fetched again (and recognised as
/// held), nothing is skipped for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_date_added_in_the_future_does_not_move_the_checkpoint_past_now() {
    common::init_logging();
    let collection = Collection::default();
    let far = parse_rfc3339("2099-01-01T00:00:00Z");
    collection.add(far, stix_indicator(1, "198.51.100.1"));
    let served = collection.clone();
    let base = serve(Arc::new(move |target: &str| {
        if target.starts_with("/api1/collections/c1/objects/") {
            served.answer(target)
        } else {
            Answer::not_found()
        }
    }))
    .await;
    let pki = Pki::new();
    let id = pki.node("future.node");
    let config = node_config(
        &pki,
        &id,
        "future",
        &format!(
            "\n[[feed]]\nname = \"t-future\"\nkind = \"taxii\"\nurl = \"{base}/api1/collections/c1/objects/\"\ninterval = \"1s\"\n"
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "future.node").await;
    wait_until("the first object", || {
        let client = &client;
        async move {
            by_value(client, "source:t-future")
                .await
                .contains_key("198.51.100.1")
                .then_some(())
        }
    })
    .await;
    let status = feed_status(&client, "t-future").await;
    assert!(
        !status.checkpoint.contains("2099"),
        "the checkpoint moved past the node's clock: {status:?}"
    );
    // The server's clock is right again: what it adds now is dated now.
    collection.add(
        time::OffsetDateTime::now_utc() + Duration::from_secs(1),
        stix_indicator(2, "198.51.100.2"),
    );
    wait_within(
        "the object added once the clock is right",
        Duration::from_secs(20),
        || {
            let client = &client;
            async move {
                by_value(client, "source:t-future")
                    .await
                    .contains_key("198.51.100.2")
                    .then_some(())
            }
        },
    )
    .await;
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A server that says `more` on every page, each with one object and a next token,
/// and every page dated alike, keeps the node paging. Past the most pages a poll may
/// follow, the poll must end as failed, saying why, rather than as a success that
/// moved nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_paging_is_cut_off_and_reported() {
    common::init_logging();
    let base = serve(Arc::new(move |target: &str| {
        if !target.starts_with("/api1/collections/c1/objects/") {
            return Answer::not_found();
        }
        // An identity: fetched and skipped, nothing to publish, so each page is cheap.
        let body = serde_json::json!({
            "more": true,
            "next": "again",
            "objects": [{
                "type": "identity",
                "spec_version": "2.1",
                "id": "identity--7d3e2c1a-0000-4000-8000-000000000001",
                "created": "2026-11-01T10:00:00.000Z",
                "modified": "2026-11-01T10:00:00.000Z",
                "name": "someone",
            }],
        });
        let at = "2026-11-01T10:00:00Z";
        Answer::taxii(&body, Some(at), Some(at))
    }))
    .await;
    let pki = Pki::new();
    let id = pki.node("pages.node");
    let config = node_config(
        &pki,
        &id,
        "pages",
        &format!(
            "\n[[feed]]\nname = \"t-pages\"\nkind = \"taxii\"\nurl = \"{base}/api1/collections/c1/objects/\"\ninterval = \"1h\"\npage_size = 1\n"
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "pages.node").await;
    let status = wait_within("the first poll", Duration::from_secs(300), || {
        let client = &client;
        async move {
            let s = feed_status(client, "t-pages").await;
            (s.polls >= 1).then_some(s)
        }
    })
    .await;
    assert_eq!(status.failures, status.polls, "{status:?}");
    assert!(status.last_error.contains("pages"), "{status:?}");
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A server that pages with `next` tokens but sends only `X-TAXII-Date-Added-Last`
/// (the first date is optional in practice) must still let a backlog larger than a
/// poll's share through, poll after poll. Before, no page boundary was ever found
/// without the first date: every poll stopped at twice `max_objects_per_poll` with the
/// checkpoint unmoved, so the same objects were fetched again and the rest never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_first_date_header_still_has_its_backlog_taken() {
    common::init_logging();
    const BACKLOG: u32 = 30;
    let start = parse_rfc3339("2026-11-01T10:00:00Z");
    // Every object its own date added, a second apart, in the listing's order.
    let objects: Vec<(time::OffsetDateTime, serde_json::Value)> = (0..BACKLOG)
        .map(|n| {
            (
                start + Duration::from_secs(u64::from(n)),
                stix_indicator(n, &format!("198.51.100.{}", n + 1)),
            )
        })
        .collect();
    let base = serve(Arc::new(move |target: &str| {
        if !target.starts_with("/api1/collections/c1/objects/") {
            return Answer::not_found();
        }
        let after = query_param(target, "added_after").map(|t| parse_rfc3339(&t));
        let limit: usize = query_param(target, "limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(1000);
        let from: usize = query_param(target, "next")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let listed: Vec<_> = objects
            .iter()
            .filter(|(at, _)| after.is_none_or(|after| *at > after))
            .collect();
        let page: Vec<_> = listed.iter().skip(from).take(limit).collect();
        let more = from + page.len() < listed.len();
        let mut body = serde_json::json!({
            "more": more,
            "objects": page.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>(),
        });
        if more {
            body["next"] = serde_json::json!((from + page.len()).to_string());
        }
        let last = page.last().map(|(at, _)| rfc3339(*at));
        Answer::taxii(&body, None, last.as_deref())
    }))
    .await;
    let pki = Pki::new();
    let id = pki.node("nofirst.node");
    let config = node_config(
        &pki,
        &id,
        "nofirst",
        &format!(
            "\n[[feed]]\nname = \"t-nofirst\"\nkind = \"taxii\"\nurl = \"{base}/api1/collections/c1/objects/\"\ninterval = \"1s\"\npage_size = 2\nmax_objects_per_poll = 5\n"
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "nofirst.node").await;
    wait_until("the whole backlog", || {
        let client = &client;
        async move {
            (by_value(client, "source:t-nofirst").await.len() == BACKLOG as usize).then_some(())
        }
    })
    .await;
    let status = feed_status(&client, "t-nofirst").await;
    assert_eq!(status.failures, 0, "{status:?}");
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

// ---------------------------------------------------------------------------------
// MISP.

const EVENT_1: &str = "5d1c0a3e-1111-4e11-8a11-000000000001";
const EVENT_2: &str = "5d1c0a3e-2222-4e22-8a22-000000000002";

fn attribute(uuid_tail: u32, ty: &str, value: &str, ts: i64) -> serde_json::Value {
    serde_json::json!({
        "uuid": format!("6e2d1b4f-0000-4000-8000-{uuid_tail:012}"),
        "type": ty,
        "category": "Network activity",
        "value": value,
        "to_ids": true,
        "timestamp": ts.to_string(),
        "comment": "",
    })
}

fn event(uuid: &str, ts: i64, attributes: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "Event": {
            "uuid": uuid,
            "info": "an event",
            "timestamp": ts.to_string(),
            "date": "2026-12-01",
            "Tag": [{"name": "tlp:green"}],
            "Attribute": attributes,
            "Object": [],
        }
    })
}

fn manifest(events: &[(&str, i64)]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (uuid, ts) in events {
        map.insert(
            (*uuid).to_owned(),
            serde_json::json!({"info": "an event", "timestamp": ts.to_string()}),
        );
    }
    serde_json::Value::Object(map)
}

/// Files of a MISP feed the test changes as it goes, by path, and how often each was
/// asked for.
#[derive(Clone, Default)]
struct MispFiles {
    files: Arc<Mutex<BTreeMap<String, serde_json::Value>>>,
    asked: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl MispFiles {
    fn set(&self, path: &str, body: serde_json::Value) {
        self.files.lock().unwrap().insert(path.to_owned(), body);
    }

    fn asked(&self, path: &str) -> usize {
        self.asked.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    async fn serve(&self) -> String {
        let files = self.clone();
        serve(Arc::new(move |target: &str| {
            let path = target.split('?').next().unwrap_or("/").to_owned();
            *files.asked.lock().unwrap().entry(path.clone()).or_default() += 1;
            match files.files.lock().unwrap().get(&path) {
                Some(body) => Answer::json(body),
                None => Answer::not_found(),
            }
        }))
        .await
    }
}

/// Two events of a feed give the same attribute (MISP copies attributes between events,
/// and a feed may merge sources). When one of them leaves the manifest, the item is
/// revoked although the other event still gives it, and stays revoked: the event that
/// still lists it is not fetched again until it changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attribute_two_events_give_stays_while_one_still_lists_it() {
    common::init_logging();
    let t1 = 1_764_000_100;
    let files = MispFiles::default();
    let shared = attribute(1, "ip-dst", "198.51.100.1", t1);
    files.set(
        "/misp/manifest.json",
        manifest(&[(EVENT_1, t1), (EVENT_2, t1)]),
    );
    files.set(
        &format!("/misp/{EVENT_1}.json"),
        event(
            EVENT_1,
            t1,
            vec![shared.clone(), attribute(2, "ip-dst", "198.51.100.2", t1)],
        ),
    );
    files.set(
        &format!("/misp/{EVENT_2}.json"),
        event(
            EVENT_2,
            t1,
            vec![shared, attribute(3, "ip-dst", "198.51.100.3", t1)],
        ),
    );
    let base = files.serve().await;
    let pki = Pki::new();
    let id = pki.node("shared.node");
    let config = node_config(
        &pki,
        &id,
        "shared",
        &format!(
            "\n[[feed]]\nname = \"m-shared\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ninterval = \"1s\"\n"
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "shared.node").await;
    wait_until("the three indicators", || {
        let client = &client;
        async move { (by_value(client, "source:m-shared").await.len() == 3).then_some(()) }
    })
    .await;

    // Event 2 leaves the manifest: its own attribute is withdrawn, the shared one is not.
    files.set("/misp/manifest.json", manifest(&[(EVENT_1, t1)]));
    let held = wait_until("event 2 withdrawn", || {
        let client = &client;
        async move {
            let held = by_value(client, "source:m-shared").await;
            (held.get("198.51.100.3") == Some(&true)).then_some(held)
        }
    })
    .await;
    assert_eq!(held.get("198.51.100.2"), Some(&false), "{held:?}");
    assert_eq!(
        held.get("198.51.100.1"),
        Some(&false),
        "event 1 still gives it: {held:?}"
    );
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// The manifest is published before the event file it describes (a mirror or a cache
/// in front of the feed lags behind): the manifest says the event changed, the file is
/// still the old one. The node records the manifest's timestamp, so the new version of
/// the event, once the file catches up, is never fetched. It must record what it read
/// and fetch the event again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_file_older_than_its_manifest_entry_is_fetched_again() {
    common::init_logging();
    let t1 = 1_764_000_100;
    let t2 = t1 + 100;
    let files = MispFiles::default();
    let path = format!("/misp/{EVENT_1}.json");
    files.set("/misp/manifest.json", manifest(&[(EVENT_1, t1)]));
    files.set(
        &path,
        event(
            EVENT_1,
            t1,
            vec![attribute(1, "ip-dst", "198.51.100.1", t1)],
        ),
    );
    let base = files.serve().await;
    let pki = Pki::new();
    let id = pki.node("stale.node");
    let config = node_config(
        &pki,
        &id,
        "stale",
        &format!(
            "\n[[feed]]\nname = \"m-stale\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ninterval = \"1s\"\n"
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "stale.node").await;
    wait_until("the first indicator", || {
        let client = &client;
        async move { (by_value(client, "source:m-stale").await.len() == 1).then_some(()) }
    })
    .await;

    // The manifest moves on; the file is still the old one for a poll or two.
    let asked = files.asked(&path);
    files.set("/misp/manifest.json", manifest(&[(EVENT_1, t2)]));
    wait_until("the stale file fetched", || {
        let files = &files;
        let path = &path;
        async move { (files.asked(path) > asked).then_some(()) }
    })
    .await;
    let from = polls(&client, "m-stale").await;
    wait_polls(&client, "m-stale", from, 1).await;
    files.set(
        &path,
        event(
            EVENT_1,
            t2,
            vec![
                attribute(1, "ip-dst", "198.51.100.1", t1),
                attribute(2, "ip-dst", "198.51.100.2", t2),
            ],
        ),
    );
    wait_within(
        "the attribute the new file adds",
        Duration::from_secs(20),
        || {
            let client = &client;
            async move {
                by_value(client, "source:m-stale")
                    .await
                    .contains_key("198.51.100.2")
                    .then_some(())
            }
        },
    )
    .await;
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

// ---------------------------------------------------------------------------------
// MISP, again: clocks ahead, events listed again, markings the mapper cannot represent,
// and `deleted` written as MISP writes it.

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The newest event timestamp a MISP feed's status gives (`… newest timestamp N`).
fn newest_timestamp(checkpoint: &str) -> Option<i64> {
    checkpoint
        .rsplit_once("newest timestamp ")
        .and_then(|(_, n)| n.trim().parse().ok())
}

/// A source whose clock runs an hour fast stamps an event ahead of the node's clock.
/// The node recorded that timestamp, so the event's version once the source's clock is
/// right (dated now, before the recorded one) was never fetched, and attributes refused
/// only because they were dated beyond the clock skew were never tried again; the status
/// said nothing. The node must hold no timestamp past its clock, read such events again,
/// take what it refused once the clock allows, and say why in the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misp_event_dated_ahead_is_not_held_past_the_clock_and_is_read_again() {
    common::init_logging();
    let now = unix_now();
    let ahead = now + 3600;
    let files = MispFiles::default();
    files.set(
        "/misp/manifest.json",
        manifest(&[(EVENT_1, ahead), (EVENT_2, now - 60)]),
    );
    files.set(
        &format!("/misp/{EVENT_1}.json"),
        event(
            EVENT_1,
            ahead,
            vec![attribute(1, "domain", "ahead.example", ahead)],
        ),
    );
    // Dated right, but one of its attributes a few seconds beyond the clock skew.
    files.set(
        &format!("/misp/{EVENT_2}.json"),
        event(
            EVENT_2,
            now - 60,
            vec![
                attribute(2, "domain", "soon.example", now + 6),
                attribute(3, "domain", "now.example", now - 60),
            ],
        ),
    );
    let base = files.serve().await;
    let pki = Pki::new();
    let id = pki.node("ahead.node");
    let config = node_config(
        &pki,
        &id,
        "ahead",
        &format!(
            "\n[[feed]]\nname = \"m-ahead\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ninterval = \"1s\"\n"
        ),
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("crls = []\n", "crls = []\nmax_clock_skew = \"1s\"\n");
    assert!(text.contains("max_clock_skew"));
    std::fs::write(&config, text).unwrap();
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "ahead.node").await;
    wait_until("the attribute dated right", || {
        let client = &client;
        async move {
            by_value(client, "source:m-ahead")
                .await
                .contains_key("now.example")
                .then_some(())
        }
    })
    .await;
    wait_polls(&client, "m-ahead", 0, 1).await;
    let status = feed_status(&client, "m-ahead").await;
    let newest = newest_timestamp(&status.checkpoint);
    assert!(
        newest.is_some_and(|n| n <= unix_now() + 1),
        "a timestamp past the node's clock is held: {status:?}"
    );
    assert!(
        status.last_error.contains("ahead"),
        "the status says nothing of the event dated ahead: {status:?}"
    );
    assert!(
        !by_value(&client, "source:m-ahead")
            .await
            .contains_key("ahead.example")
    );
    // The attribute refused for the clock skew alone is taken once the clock reaches it.
    wait_within(
        "the attribute dated a few seconds ahead",
        Duration::from_secs(30),
        || {
            let client = &client;
            async move {
                by_value(client, "source:m-ahead")
                    .await
                    .contains_key("soon.example")
                    .then_some(())
            }
        },
    )
    .await;
    // The source's clock is right again: the event is republished, dated now.
    let fixed = unix_now();
    files.set(
        &format!("/misp/{EVENT_1}.json"),
        event(
            EVENT_1,
            fixed,
            vec![attribute(1, "domain", "ahead.example", fixed)],
        ),
    );
    files.set(
        "/misp/manifest.json",
        manifest(&[(EVENT_1, fixed), (EVENT_2, now - 60)]),
    );
    wait_within(
        "the event once the source's clock is right",
        Duration::from_secs(20),
        || {
            let client = &client;
            async move {
                by_value(client, "source:m-ahead")
                    .await
                    .get("ahead.example")
                    .is_some_and(|revoked| !revoked)
                    .then_some(())
            }
        },
    )
    .await;
    // Nothing is dated ahead any more: a poll succeeds and clears the error.
    wait_until("the error cleared", || {
        let client = &client;
        async move {
            let status = feed_status(client, "m-ahead").await;
            status.last_error.is_empty().then_some(())
        }
    })
    .await;
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// An event leaves `manifest.json` for one poll (the source unpublished it, or its
/// export was cut short): the node revokes its attributes. When the source lists it
/// again, unchanged, its attributes' versions were older than the revocation the node
/// signed and were passed over as held: the indicators stayed revoked for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_listed_again_after_it_left_the_manifest_is_live_again() {
    common::init_logging();
    let t1 = 1_764_000_100;
    let files = MispFiles::default();
    files.set(
        "/misp/manifest.json",
        manifest(&[(EVENT_1, t1), (EVENT_2, t1)]),
    );
    files.set(
        &format!("/misp/{EVENT_1}.json"),
        event(
            EVENT_1,
            t1,
            vec![attribute(1, "ip-dst", "198.51.100.1", t1)],
        ),
    );
    files.set(
        &format!("/misp/{EVENT_2}.json"),
        event(
            EVENT_2,
            t1,
            vec![attribute(2, "ip-dst", "198.51.100.2", t1)],
        ),
    );
    let base = files.serve().await;
    let pki = Pki::new();
    let id = pki.node("relisted.node");
    let config = node_config(
        &pki,
        &id,
        "relisted",
        &format!(
            "\n[[feed]]\nname = \"m-relisted\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ninterval = \"1s\"\n"
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "relisted.node").await;
    wait_until("the two indicators", || {
        let client = &client;
        async move { (by_value(client, "source:m-relisted").await.len() == 2).then_some(()) }
    })
    .await;

    files.set("/misp/manifest.json", manifest(&[(EVENT_1, t1)]));
    wait_until("event 2 withdrawn", || {
        let client = &client;
        async move {
            (by_value(client, "source:m-relisted")
                .await
                .get("198.51.100.2")
                == Some(&true))
            .then_some(())
        }
    })
    .await;

    // Listed again, as it was.
    files.set(
        "/misp/manifest.json",
        manifest(&[(EVENT_1, t1), (EVENT_2, t1)]),
    );
    wait_within(
        "event 2's indicator live again",
        Duration::from_secs(20),
        || {
            let client = &client;
            async move {
                (by_value(client, "source:m-relisted")
                    .await
                    .get("198.51.100.2")
                    == Some(&false))
                .then_some(())
            }
        },
    )
    .await;
    let held = items_tagged(&client, "source:m-relisted").await;
    let live = held
        .values()
        .map(|s| s.item.as_ref().unwrap())
        .find(|i| matches!(i.kind, Some(item::Kind::Indicator(ref x)) if x.value == "198.51.100.2"))
        .unwrap();
    assert!(
        live.modified_unix_ms > t1 * 1000,
        "dated after the revocation it replaces: {live:?}"
    );
    assert_eq!(
        by_value(&client, "source:m-relisted")
            .await
            .get("198.51.100.1"),
        Some(&false)
    );
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// MISP's own taxonomy has `tlp:ex:chr` (Chatham House Rule), `tlp:ex:nc`, `tlp:unclear`.
/// The mapper ignored them and gave the event the feed's default marking: an event
/// tagged `tlp:ex:chr` on a feed with `tlp = "clear"` went out as CLEAR. A `tlp:` tag the
/// mapper cannot represent must never lower the marking: it counts as RED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tlp_tag_the_mapper_cannot_represent_marks_the_item_red() {
    common::init_logging();
    let t1 = 1_764_000_100;
    let files = MispFiles::default();
    files.set(
        "/misp/manifest.json",
        manifest(&[(EVENT_1, t1), (EVENT_2, t1)]),
    );
    let mut chr = event(EVENT_1, t1, vec![attribute(1, "domain", "chr.example", t1)]);
    chr["Event"]["Tag"] = serde_json::json!([{"name": "tlp:ex:chr"}]);
    files.set(&format!("/misp/{EVENT_1}.json"), chr);
    // An event without a marking, an attribute with one of another unknown `tlp:` tag.
    let mut tagged = attribute(2, "domain", "unclear.example", t1);
    tagged["Tag"] = serde_json::json!([{"name": "TLP:UNCLEAR"}]);
    let mut untagged = event(EVENT_2, t1, vec![tagged]);
    untagged["Event"]["Tag"] = serde_json::json!([]);
    files.set(&format!("/misp/{EVENT_2}.json"), untagged);
    let base = files.serve().await;
    let pki = Pki::new();
    let id = pki.node("chr.node");
    let config = node_config(
        &pki,
        &id,
        "chr",
        &format!(
            "\n[[feed]]\nname = \"m-chr\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ntlp = \"clear\"\ninterval = \"1s\"\n"
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "chr.node").await;
    let held = wait_until("the two indicators", || {
        let client = &client;
        async move {
            let held = items_tagged(client, "source:m-chr").await;
            (held.len() == 2).then_some(held)
        }
    })
    .await;
    for stored in held.values() {
        let item = stored.item.as_ref().unwrap();
        assert_eq!(
            item.tlp,
            entente::wire::Tlp::Red as i32,
            "an unknown tlp: tag lowered the marking: {item:?}"
        );
    }
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// MISP writes `deleted` as a boolean, and older exports and other tools as `"1"` or
/// `1`. Only a JSON boolean was read, so an attribute deleted as `"1"` was published as
/// live. Every form `to_ids` accepts is read, and a value that cannot be read counts as
/// deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_is_read_in_every_form_misp_writes_and_fails_closed() {
    common::init_logging();
    let t1 = 1_764_000_100;
    let files = MispFiles::default();
    let deleted = serde_json::json!([
        true,
        "1",
        1,
        "true",
        "TRUE",
        "maybe",
        {"x": 1},
        2,
        false,
        "0",
        0,
        "false",
        null
    ]);
    let mut attributes = Vec::new();
    for (n, value) in deleted.as_array().unwrap().iter().enumerate() {
        let mut a = attribute(n as u32 + 1, "ip-dst", &format!("198.51.100.{}", n + 1), t1);
        a["deleted"] = value.clone();
        attributes.push(a);
    }
    attributes.push(attribute(50, "ip-dst", "198.51.100.50", t1));
    let mut file = event(EVENT_1, t1, attributes);
    // An object deleted as "1": its attributes are not taken either.
    file["Event"]["Object"] = serde_json::json!([{
        "name": "domain-ip",
        "deleted": "1",
        "Attribute": [attribute(60, "domain", "object-deleted.example", t1)],
    }]);
    files.set("/misp/manifest.json", manifest(&[(EVENT_1, t1)]));
    files.set(&format!("/misp/{EVENT_1}.json"), file);
    let base = files.serve().await;
    let pki = Pki::new();
    let id = pki.node("deleted.node");
    let config = node_config(
        &pki,
        &id,
        "deleted",
        &format!(
            "\n[[feed]]\nname = \"m-deleted\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ninterval = \"1s\"\n"
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "deleted.node").await;
    wait_until("the live attributes", || {
        let client = &client;
        async move {
            by_value(client, "source:m-deleted")
                .await
                .contains_key("198.51.100.50")
                .then_some(())
        }
    })
    .await;
    wait_polls(&client, "m-deleted", 0, 1).await;
    let held = by_value(&client, "source:m-deleted").await;
    let live: Vec<&String> = held.keys().collect();
    assert_eq!(
        live,
        vec![
            "198.51.100.10",
            "198.51.100.11",
            "198.51.100.12",
            "198.51.100.13",
            "198.51.100.50",
            "198.51.100.9",
        ],
        "{held:?}"
    );
    assert!(held.values().all(|revoked| !revoked), "{held:?}");
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}
