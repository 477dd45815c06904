//! Feeds that fail or run ahead: MISP events that keep failing must not hold back the
//! newer events of their feed, and a TAXII object dated ahead of this node's clock (a
//! server whose clock runs fast) must be taken once the clock allows it rather than
//! passed over for good. Each test serves the feed itself on a loopback port and runs a
//! node in-process.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entente::client::NodeClient;
use entente::rpc::proto::FeedStatus;
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
    content_type: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(body: &serde_json::Value) -> Self {
        Answer {
            status: 200,
            content_type: "application/json",
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
        }
    }

    fn taxii(body: &serde_json::Value, last: &str) -> Self {
        Answer {
            status: 200,
            content_type: "application/taxii+json;version=2.1",
            headers: vec![("X-TAXII-Date-Added-Last".into(), last.into())],
            body: body.to_string().into_bytes(),
        }
    }

    fn taxii_empty() -> Self {
        Answer {
            status: 200,
            content_type: "application/taxii+json;version=2.1",
            headers: Vec::new(),
            body: br#"{"more":false,"objects":[]}"#.to_vec(),
        }
    }

    fn not_found() -> Self {
        Answer {
            status: 404,
            content_type: "text/plain",
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
                let mut out = format!(
                    "HTTP/1.1 {} X\r\nConnection: close\r\nContent-Type: {}\r\n",
                    answer.status, answer.content_type
                );
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

/// Files of a feed the test changes as it goes, by path (the query is ignored).
#[derive(Clone, Default)]
struct Files {
    files: Arc<Mutex<BTreeMap<String, Answer>>>,
}

impl Files {
    fn set(&self, path: &str, answer: Answer) {
        self.files.lock().unwrap().insert(path.to_owned(), answer);
    }

    async fn serve(&self) -> String {
        let files = self.clone();
        serve(Arc::new(move |target: &str| {
            let path = target.split('?').next().unwrap_or("/");
            match files.files.lock().unwrap().get(path) {
                Some(answer) => Answer {
                    status: answer.status,
                    content_type: answer.content_type,
                    headers: answer.headers.clone(),
                    body: answer.body.clone(),
                },
                None => Answer::not_found(),
            }
        }))
        .await
    }
}

// ---------------------------------------------------------------------------------
// A node with one feed.

struct Running {
    node: entente::Node,
    /// The node's own identity (reads everything, and `Admin.Feeds`).
    own: NodeClient,
    _pki: Pki,
}

/// A node named `name` polling `feed`, with `node.max_clock_skew` set to `skew`.
async fn start(name: &str, feed: &str, skew: &str) -> Running {
    common::init_logging();
    let pki = Pki::new();
    let id = pki.node(&format!("{name}.node"));
    let text = common::node_toml(&pki, &id, &pki.path().join(format!("data-{name}")))
        .section(feed)
        .render()
        .replacen(
            "crls = []\n",
            &format!("crls = []\nmax_clock_skew = \"{skew}\"\n"),
            1,
        );
    assert!(text.contains("max_clock_skew"), "{text}");
    let path = pki.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let node = common::start(&path).await;
    let own = common::connect(&pki, &node, id.as_str()).await;
    Running {
        node,
        own,
        _pki: pki,
    }
}

/// The values of the indicators tagged `tag` the node holds live.
async fn live_values(client: &NodeClient, tag: &str) -> Vec<String> {
    let mut out: Vec<String> = items_tagged(client, tag)
        .await
        .into_values()
        .filter_map(|stored| match stored.item?.kind? {
            item::Kind::Indicator(i) => Some(i.value),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// Waits until the feed `feed` has ended at least `n` polls, and returns its status.
async fn after_polls(client: &NodeClient, feed: &str, n: u64) -> FeedStatus {
    wait_within("polls", DEADLINE, || async move {
        let status = feed_status(client, feed).await;
        (status.polls >= n).then_some(status)
    })
    .await
}

/// Waits until the node holds an indicator of `value` tagged `tag`.
async fn wait_for_value(client: &NodeClient, tag: &str, value: &str) {
    wait_within(value, DEADLINE, || async move {
        live_values(client, tag)
            .await
            .iter()
            .any(|v| v == value)
            .then_some(())
    })
    .await
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------------------------
// MISP.

fn event_uuid(n: u32) -> String {
    format!("5d1c0a3e-8888-4e88-8a88-{n:012}")
}

fn misp_event(n: u32, ts: i64, value: &str) -> Answer {
    Answer::json(&serde_json::json!({"Event": {
        "uuid": event_uuid(n),
        "info": "an event",
        "timestamp": ts.to_string(),
        "date": "2026-12-01",
        "Attribute": [{
            "uuid": format!("6e2d1b4f-0000-4000-8000-{n:012}"),
            "type": "domain",
            "category": "Network activity",
            "value": value,
            "to_ids": true,
            "timestamp": ts.to_string(),
            "comment": "",
        }],
        "Object": [],
    }}))
}

fn misp_manifest(events: &[(u32, i64)]) -> Answer {
    let mut map = serde_json::Map::new();
    for (n, ts) in events {
        map.insert(
            event_uuid(*n),
            serde_json::json!({"info": "an event", "timestamp": ts.to_string()}),
        );
    }
    Answer::json(&serde_json::Value::Object(map))
}

/// Three old events whose files are missing (404) and two newer ones that can be read,
/// with `max_events_per_poll = 3`. Each poll took the three oldest wanted events, the
/// failing ones, so the newer two were never taken while every poll said an event
/// could not be fetched. The newer ones must be taken, `status` must say how many
/// events are failing, and a failing event that can be read again must be taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misp_events_that_keep_failing_do_not_hold_back_newer_ones() {
    let now = unix_now();
    let old = now - 7200;
    let newer = now - 3600;
    let files = Files::default();
    files.set(
        "/misp/manifest.json",
        misp_manifest(&[(1, old), (2, old + 1), (3, old + 2), (4, newer), (5, newer)]),
    );
    files.set(
        &format!("/misp/{}.json", event_uuid(4)),
        misp_event(4, newer, "newer-4.example"),
    );
    files.set(
        &format!("/misp/{}.json", event_uuid(5)),
        misp_event(5, newer, "newer-5.example"),
    );
    let base = files.serve().await;
    let feed = format!(
        "[[feed]]\nname = \"m-fail\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ntlp = \"green\"\ninterval = \"1s\"\nmax_events_per_poll = 3\n"
    );
    let run = start("mfail", &feed, "5m").await;
    let status = after_polls(&run.own, "m-fail", 4).await;
    assert_eq!(
        live_values(&run.own, "source:m-fail").await,
        ["newer-4.example", "newer-5.example"],
        "the events that can be read are not taken while older ones fail: {status:?}"
    );
    let status = feed_status(&run.own, "m-fail").await;
    assert!(
        status.checkpoint.contains("2 events held, 3 failing"),
        "the status does not say how many events are failing: {status:?}"
    );
    // A failing event that can be read again is taken, at the same manifest timestamp.
    files.set(
        &format!("/misp/{}.json", event_uuid(1)),
        misp_event(1, old, "fixed-1.example"),
    );
    wait_for_value(&run.own, "source:m-fail", "fixed-1.example").await;
    let status = wait_within("two failing", DEADLINE, || {
        let own = &run.own;
        async move {
            let status = feed_status(own, "m-fail").await;
            status
                .checkpoint
                .contains("3 events held, 2 failing")
                .then_some(status)
        }
    })
    .await;
    assert!(status.failures > 0, "{status:?}");
    run.node.shutdown(Duration::from_secs(5)).await.unwrap();
}

// ---------------------------------------------------------------------------------
// TAXII.

const OBJECTS: &str = "/api1/collections/c1/objects/";

/// The date added of the only page the server serves.
const DATE_ADDED: &str = "2026-12-01T00:00:00.000Z";

fn stix_time(unix_s: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_s)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn stix_indicator(id: &str, value: &str, modified: i64) -> serde_json::Value {
    serde_json::json!({
        "type": "indicator",
        "spec_version": "2.1",
        "id": id,
        "created": stix_time(modified),
        "modified": stix_time(modified),
        "pattern": format!("[domain-name:value = '{value}']"),
        "pattern_type": "stix",
        "valid_from": stix_time(modified),
        "object_marking_refs": [TLP_GREEN],
    })
}

/// A vendor server whose clock runs fast dates one object of a page past
/// `node.max_clock_skew`. The node refused it as unpublishable, counted it as skipped,
/// and moved its checkpoint past the page, so (the server serving nothing after that
/// date) the object was never fetched again while every poll reported success. It must
/// be named in `status` as dated ahead, the checkpoint must stay before its page, and
/// it must be taken once the node's clock allows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taxii_object_dated_ahead_is_taken_once_the_clock_allows_it() {
    let now = unix_now();
    let ahead_at = now + 30;
    let ahead_id = "indicator--1b1b7a7e-aaaa-4c1c-8a8a-000000000002";
    let page = serde_json::json!({"more": false, "objects": [
        stix_indicator("indicator--1b1b7a7e-aaaa-4c1c-8a8a-000000000001", "on-time.example", now - 60),
        stix_indicator(ahead_id, "ahead.example", ahead_at),
    ]});
    // Like a conforming server: asked for what was added after the page's date, it
    // has nothing more.
    let base = serve(Arc::new(move |target: &str| {
        if target.contains("added_after=") {
            Answer::taxii_empty()
        } else {
            Answer::taxii(&page, DATE_ADDED)
        }
    }))
    .await;
    let feed = format!(
        "[[feed]]\nname = \"t-ahead\"\nkind = \"taxii\"\nurl = \"{base}{OBJECTS}\"\ninterval = \"1s\"\n"
    );
    let run = start("tahead", &feed, "1s").await;
    wait_for_value(&run.own, "source:t-ahead", "on-time.example").await;
    let status = after_polls(&run.own, "t-ahead", 2).await;
    assert!(
        unix_now() < ahead_at - 1,
        "the machine is too slow for this test: the object is no longer ahead"
    );
    assert!(
        status.last_error.contains(ahead_id) && status.last_error.contains("ahead"),
        "the status does not name the object dated ahead: {status:?}"
    );
    assert!(
        !status.checkpoint.contains("2026-12-01"),
        "the checkpoint moved past the page holding the object dated ahead: {status:?}"
    );
    // Once the node's clock allows it, the object is taken and the checkpoint moves.
    wait_for_value(&run.own, "source:t-ahead", "ahead.example").await;
    let status = wait_within("the checkpoint past the page", DEADLINE, || {
        let own = &run.own;
        async move {
            let status = feed_status(own, "t-ahead").await;
            (status.checkpoint.contains("2026-12-01") && status.last_error.is_empty())
                .then_some(status)
        }
    })
    .await;
    assert_eq!(
        live_values(&run.own, "source:t-ahead").await,
        ["ahead.example", "on-time.example"],
        "{status:?}"
    );
    run.node.shutdown(Duration::from_secs(5)).await.unwrap();
}
