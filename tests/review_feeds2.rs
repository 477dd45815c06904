//! What feeds carry in: a MISP event's sharing control (`distribution`) and tags, a
//! feed object's `source:` label, a TAXII page with one id given two values, and a
//! refused URL's credentials in the reasons a feed reports. Each test serves the feed
//! itself on a loopback port and runs a node in-process, with a read-only client whose
//! policy denies tags the way README's law-enforcement example does.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entente::client::NodeClient;
use entente::config::builder;
use entente::rpc::proto::FeedStatus;
use entente::wire::item;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::Pki;
use common::feeds::{feed_status, items_tagged, wait_within};

/// Upper bound for anything the tests wait for.
const DEADLINE: Duration = Duration::from_secs(60);

/// The OASIS TLP 2.0 AMBER marking definition.
const TLP_AMBER: &str = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421";

/// The read-only client of every test: AMBER at most, every type, and the tags of
/// README's law-enforcement partner denied.
const LEA: &str = "siem.lea";

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
// A node with one feed and the read-only client.

struct Running {
    node: entente::Node,
    /// The node's own identity (reads everything, and `Admin.Feeds`).
    own: NodeClient,
    /// The read-only client with the law-enforcement policy.
    lea: NodeClient,
    _pki: Pki,
}

async fn start(name: &str, feed: &str) -> Running {
    common::init_logging();
    let pki = Pki::new();
    let id = pki.node(&format!("{name}.node"));
    pki.node(LEA);
    let config = common::node_toml(&pki, &id, &pki.path().join(format!("data-{name}")))
        .entry(
            builder::Entry::client(LEA, "read_only").policy(
                builder::Policy::all_types()
                    .max_tlp("amber")
                    .line(r#"deny_tags = ["pii", "source:informant", "pap:red"]"#),
            ),
        )
        .section(feed);
    let path = pki.path().join(format!("{name}.toml"));
    config.write(&path).unwrap();
    let node = common::start(&path).await;
    let own = common::connect(&pki, &node, id.as_str()).await;
    let lea = common::connect(&pki, &node, LEA).await;
    Running {
        node,
        own,
        lea,
        _pki: pki,
    }
}

/// The items tagged `tag` that `client` may see, by value (a revocation by the value it
/// revokes), with whether each is a revocation and its tags.
async fn by_value(client: &NodeClient, tag: &str) -> BTreeMap<String, (bool, Vec<String>)> {
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
        out.insert(value, (revoked, item.tags.clone()));
    }
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

fn reasons(status: &FeedStatus) -> String {
    status.skip_reasons.join("\n")
}

// ---------------------------------------------------------------------------------
// MISP.

const EVENT_SHARED: &str = "5d1c0a3e-1111-4e11-8a11-000000000001";
const EVENT_ORG_ONLY: &str = "5d1c0a3e-2222-4e22-8a22-000000000002";
const EVENT_GROUP: &str = "5d1c0a3e-3333-4e33-8a33-000000000003";
const EVENT_TAGGED: &str = "5d1c0a3e-4444-4e44-8a44-000000000004";

fn attribute(uuid_tail: u32, value: &str, ts: i64) -> serde_json::Value {
    serde_json::json!({
        "uuid": format!("6e2d1b4f-0000-4000-8000-{uuid_tail:012}"),
        "type": "domain",
        "category": "Network activity",
        "value": value,
        "to_ids": true,
        "timestamp": ts.to_string(),
        "comment": "",
    })
}

fn event(uuid: &str, ts: i64, extra: serde_json::Value) -> serde_json::Value {
    let mut event = serde_json::json!({
        "uuid": uuid,
        "info": "an event",
        "timestamp": ts.to_string(),
        "date": "2026-12-01",
        "Attribute": [],
        "Object": [],
    });
    for (key, value) in extra.as_object().unwrap() {
        event[key] = value.clone();
    }
    serde_json::json!({ "Event": event })
}

fn manifest(events: &[(&str, i64)]) -> Answer {
    let mut map = serde_json::Map::new();
    for (uuid, ts) in events {
        map.insert(
            (*uuid).to_owned(),
            serde_json::json!({"info": "an event", "timestamp": ts.to_string()}),
        );
    }
    Answer::json(&serde_json::Value::Object(map))
}

fn misp_feed(name: &str, base: &str) -> String {
    format!(
        "[[feed]]\nname = \"{name}\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ntlp = \"green\"\ninterval = \"1s\"\n"
    )
}

/// MISP's `distribution` is its sharing control: 0 is "your organisation only", 4 a
/// sharing group, 5 "inherit". An attribute whose event, object or own distribution is
/// 0 or 4 (or cannot be read) must not become an item shared with every partner; one
/// whose event changes to 0 has its item revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misp_attribute_restricted_by_its_distribution_is_not_shared() {
    let t1 = 1_764_000_100;
    let files = Files::default();
    let mut in_object = attribute(3, "object-org-only.example", t1);
    in_object["distribution"] = "5".into();
    let mut attribute_group = attribute(4, "attribute-group.example", t1);
    attribute_group["distribution"] = 4.into();
    let mut inherits = attribute(5, "inherits.example", t1);
    inherits["distribution"] = "5".into();
    let mut unreadable = attribute(6, "unreadable.example", t1);
    unreadable["distribution"] = "all".into();
    files.set(
        &format!("/misp/{EVENT_SHARED}.json"),
        Answer::json(&event(
            EVENT_SHARED,
            t1,
            serde_json::json!({
                "distribution": "3",
                "Attribute": [
                    attribute(1, "shared.example", t1),
                    attribute_group,
                    inherits,
                    unreadable,
                ],
                "Object": [{"name": "domain-ip", "distribution": "0", "Attribute": [in_object]}],
            }),
        )),
    );
    files.set(
        &format!("/misp/{EVENT_ORG_ONLY}.json"),
        Answer::json(&event(
            EVENT_ORG_ONLY,
            t1,
            serde_json::json!({
                "distribution": "0",
                "Attribute": [attribute(2, "org-only.example", t1)],
            }),
        )),
    );
    files.set(
        &format!("/misp/{EVENT_GROUP}.json"),
        Answer::json(&event(
            EVENT_GROUP,
            t1,
            serde_json::json!({
                "distribution": "1",
                "Attribute": [attribute(7, "community.example", t1)],
            }),
        )),
    );
    files.set(
        "/misp/manifest.json",
        manifest(&[(EVENT_SHARED, t1), (EVENT_ORG_ONLY, t1), (EVENT_GROUP, t1)]),
    );
    let base = files.serve().await;
    let run = start("dist", &misp_feed("m-dist", &base)).await;
    let status = after_polls(&run.own, "m-dist", 1).await;
    let held = by_value(&run.own, "source:m-dist").await;
    let values: Vec<&str> = held.keys().map(String::as_str).collect();
    assert_eq!(
        values,
        ["community.example", "inherits.example", "shared.example"],
        "only what the source lets leave is held; status {status:?}"
    );
    let seen = by_value(&run.lea, "source:m-dist").await;
    assert!(
        !seen.contains_key("org-only.example"),
        "an organisation-only attribute reached a partner: {seen:?}"
    );
    let why = reasons(&status);
    assert!(why.contains("your organisation only"), "{why}");
    assert!(why.contains("sharing group"), "{why}");
    assert!(why.contains("cannot be read"), "{why}");
    assert_eq!(status.objects_skipped, 4, "{status:?}");

    // The source restricts the shared event to its organisation: its items are revoked.
    let t2 = t1 + 100;
    files.set(
        &format!("/misp/{EVENT_SHARED}.json"),
        Answer::json(&event(
            EVENT_SHARED,
            t2,
            serde_json::json!({
                "distribution": 0,
                "Attribute": [attribute(1, "shared.example", t1)],
            }),
        )),
    );
    files.set(
        "/misp/manifest.json",
        manifest(&[(EVENT_SHARED, t2), (EVENT_ORG_ONLY, t1), (EVENT_GROUP, t1)]),
    );
    wait_within("the restricted event's items revoked", DEADLINE, || {
        let client = &run.own;
        async move {
            let held = by_value(client, "source:m-dist").await;
            (held
                .get("shared.example")
                .is_some_and(|(revoked, _)| *revoked)
                && held
                    .get("inherits.example")
                    .is_some_and(|(revoked, _)| *revoked))
            .then_some(())
        }
    })
    .await;
    run.node.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A MISP event's and attribute's tags are carried as item tags (a `tlp:` tag stays the
/// marking), so a partner whose policy denies `pii` or `pap:red` does not receive what
/// they mark. A tag that cannot be carried (not ASCII) and a `source:` tag the feed
/// may not claim withhold the attribute rather than being dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misp_tags_are_carried_and_one_that_cannot_be_withholds_the_attribute() {
    let t1 = 1_764_000_100;
    let files = Files::default();
    let mut pii = attribute(1, "victim-portal.example", t1);
    pii["Tag"] = serde_json::json!([{"name": "case:4711"}]);
    let mut pap = attribute(2, "pap-red.example", t1);
    pap["Tag"] = serde_json::json!(["PAP:RED"]);
    let mut galaxy = attribute(3, "galaxy.example", t1);
    galaxy["Tag"] = serde_json::json!([{"name": "misp-galaxy:threat-actor=\"Sofacy Group\""}]);
    let mut informant = attribute(4, "informant-tip.example", t1);
    informant["Tag"] = serde_json::json!([{"name": "source:informant"}]);
    let mut plain = attribute(5, "plain.example", t1);
    plain["Tag"] = serde_json::json!([{"name": "osint"}]);
    let mut foreign = attribute(6, "foreign.example", t1);
    foreign["Tag"] = serde_json::json!([{"name": "misp-galaxy:threat-actor=\"Кимсуки\""}]);
    files.set(
        &format!("/misp/{EVENT_TAGGED}.json"),
        Answer::json(&event(
            EVENT_TAGGED,
            t1,
            serde_json::json!({
                "distribution": "3",
                "Tag": [{"name": "tlp:amber"}, {"name": "pii"}],
                "Attribute": [pii],
            }),
        )),
    );
    files.set(
        &format!("/misp/{EVENT_SHARED}.json"),
        Answer::json(&event(
            EVENT_SHARED,
            t1,
            serde_json::json!({
                "Attribute": [pap, galaxy, informant, plain, foreign],
            }),
        )),
    );
    files.set(
        "/misp/manifest.json",
        manifest(&[(EVENT_TAGGED, t1), (EVENT_SHARED, t1)]),
    );
    let base = files.serve().await;
    let run = start("tags", &misp_feed("m-tags", &base)).await;
    let status = after_polls(&run.own, "m-tags", 1).await;
    let held = by_value(&run.own, "source:m-tags").await;
    let values: Vec<&str> = held.keys().map(String::as_str).collect();
    assert_eq!(
        values,
        [
            "galaxy.example",
            "pap-red.example",
            "plain.example",
            "victim-portal.example"
        ],
        "status {status:?}"
    );
    // Whitespace in a MISP tag is written `_`.
    assert_eq!(
        held["galaxy.example"].1,
        ["misp-galaxy:threat-actor=\"Sofacy_Group\"", "source:m-tags"]
    );
    assert_eq!(
        held["victim-portal.example"].1,
        ["pii", "case:4711", "source:m-tags"]
    );
    assert_eq!(held["pap-red.example"].1, ["PAP:RED", "source:m-tags"]);
    assert_eq!(held["plain.example"].1, ["osint", "source:m-tags"]);
    let seen = by_value(&run.lea, "source:m-tags").await;
    let seen: Vec<&str> = seen.keys().map(String::as_str).collect();
    assert_eq!(
        seen,
        ["galaxy.example", "plain.example"],
        "the partner denies pii and pap:red"
    );
    let why = reasons(&status);
    assert!(why.contains("Кимсуки"), "{why}");
    assert!(why.contains("\"source:informant\""), "{why}");
    run.node.shutdown(Duration::from_secs(5)).await.unwrap();
}

// ---------------------------------------------------------------------------------
// TAXII.

fn stix_indicator(id_tail: u32, pattern: &str, labels: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "type": "indicator",
        "spec_version": "2.1",
        "id": format!("indicator--1b1b7a7e-1111-4c1c-8a8a-{id_tail:012}"),
        "created": "2026-11-01T10:00:00.000Z",
        "modified": "2026-11-01T10:00:00.000Z",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2026-11-01T10:00:00Z",
        "labels": labels,
        "object_marking_refs": [TLP_AMBER],
    })
}

fn taxii_feed(name: &str, base: &str) -> String {
    format!(
        "[[feed]]\nname = \"{name}\"\nkind = \"taxii\"\nurl = \"{base}/api1/collections/c1/objects/\"\ninterval = \"1s\"\n"
    )
}

const OBJECTS: &str = "/api1/collections/c1/objects/";

/// A TAXII object labelled `source:informant` (a label README's law-enforcement policy
/// denies) loses the label when the feed does not give it, and reaches that partner.
/// It must be skipped, with the label named, rather than published without it; the
/// feed's own `source:` label is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_object_with_a_source_label_it_may_not_claim_is_skipped() {
    let files = Files::default();
    let objects = vec![
        stix_indicator(
            1,
            "[domain-name:value = 'handler-meeting.example']",
            &["source:informant"],
        ),
        stix_indicator(2, "[domain-name:value = 'own.example']", &["source:t-src"]),
        stix_indicator(3, "[domain-name:value = 'plain.example']", &["osint"]),
    ];
    files.set(
        OBJECTS,
        Answer::taxii(
            &serde_json::json!({"more": false, "objects": objects}),
            "2026-12-01T00:00:00.000Z",
        ),
    );
    let base = files.serve().await;
    let run = start("src", &taxii_feed("t-src", &base)).await;
    let status = after_polls(&run.own, "t-src", 1).await;
    let held = by_value(&run.own, "source:t-src").await;
    let values: Vec<&str> = held.keys().map(String::as_str).collect();
    assert_eq!(values, ["own.example", "plain.example"], "{status:?}");
    let seen = by_value(&run.lea, "source:t-src").await;
    assert!(!seen.contains_key("handler-meeting.example"), "{seen:?}");
    let why = reasons(&status);
    assert!(why.contains("\"source:informant\""), "{why}");
    run.node.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// One page holding 200 valid indicators and two objects that give one id different
/// values: the two are refused, counted with the reason, and the 200 are taken (a file
/// given to `entente publish` is still refused whole), and the checkpoint moves past
/// the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_with_one_id_given_two_values_keeps_the_rest_of_the_page() {
    let files = Files::default();
    let mut objects: Vec<serde_json::Value> = (1..=200u32)
        .map(|n| {
            stix_indicator(
                n,
                &format!("[ipv4-addr:value = '198.51.{}.{}']", n / 200, n % 200 + 1),
                &[],
            )
        })
        .collect();
    objects.insert(
        50,
        stix_indicator(999, "[domain-name:value = 'one.example']", &[]),
    );
    objects.push(stix_indicator(
        999,
        "[domain-name:value = 'other.example']",
        &[],
    ));
    files.set(
        OBJECTS,
        Answer::taxii(
            &serde_json::json!({"more": false, "objects": objects}),
            "2026-12-01T00:00:00.000Z",
        ),
    );
    let base = files.serve().await;
    let run = start("page", &taxii_feed("t-page", &base)).await;
    let status = after_polls(&run.own, "t-page", 1).await;
    let held = by_value(&run.own, "source:t-page").await;
    assert_eq!(held.len(), 200, "status {status:?}");
    assert!(!held.contains_key("one.example") && !held.contains_key("other.example"));
    assert_eq!(status.objects_fetched, 202, "{status:?}");
    assert_eq!(status.objects_skipped, 2, "{status:?}");
    assert!(status.checkpoint.contains("2026-12-01"), "{status:?}");
    let why = reasons(&status);
    assert!(
        why.contains("objects[50]") && why.contains("objects[201]"),
        "{why}"
    );
    assert!(why.contains("the same id"), "{why}");
    run.node.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A URL refused for carrying user information is reported (in the feed's skip reasons
/// and the node's log) with that part replaced, never with the password it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_url_is_reported_without_its_credentials() {
    let files = Files::default();
    let objects = vec![stix_indicator(
        1,
        "[url:value = 'https://svc-backup:Winter2026-Vault!@portal.example.com/login']",
        &[],
    )];
    files.set(
        OBJECTS,
        Answer::taxii(
            &serde_json::json!({"more": false, "objects": objects}),
            "2026-12-01T00:00:00.000Z",
        ),
    );
    let base = files.serve().await;
    let run = start("cred", &taxii_feed("t-cred", &base)).await;
    let status = after_polls(&run.own, "t-cred", 1).await;
    assert_eq!(status.objects_skipped, 1, "{status:?}");
    let why = reasons(&status);
    assert!(why.contains("user information"), "{why}");
    assert!(
        !why.contains("Winter2026-Vault") && !why.contains("svc-backup"),
        "{why}"
    );
    assert!(
        why.contains("https://***@portal.example.com/login"),
        "{why}"
    );
    run.node.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A TAXII POST whose indicator carries a URL with a password: the status resource,
/// which the node keeps in its store, names the object without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taxii_status_names_a_refused_url_without_its_credentials() {
    use common::https::{get, objects_path, post, tls};
    let pki = Pki::new();
    let id = pki.node("redmond.hq");
    pki.node("analyst.soc");
    let config = common::node_toml(&pki, &id, &pki.path().join("data"))
        .entry(builder::Entry::client("analyst.soc", "analyst"))
        .section("[taxii]\nlisten = \"127.0.0.1:0\"\n");
    let path = pki.path().join("hq.toml");
    config.write(&path).unwrap();
    let node = common::serve_taxii(&path);
    let analyst = tls(&pki, "analyst.soc");
    let objects = objects_path(&analyst, &node).await;
    let refused = stix_indicator(
        1,
        "[url:value = 'https://svc:S3cretPassw0rd@portal.example.com/login']",
        &[],
    );
    let body = serde_json::json!({ "objects": [refused] }).to_string();
    let posted = post(&analyst, node.taxii, &objects, &body).await;
    assert_eq!(posted.status, 202, "{}", posted.text());
    let status = posted.json();
    let status_path = format!("/api/status/{}/", status["id"].as_str().unwrap());
    let kept = get(&analyst, node.taxii, &status_path).await;
    for text in [posted.text(), kept.text()] {
        assert!(text.contains("user information"), "{text}");
        assert!(
            !text.contains("S3cretPassw0rd") && !text.contains("svc:"),
            "{text}"
        );
        assert!(
            text.contains("https://***@portal.example.com/login"),
            "{text}"
        );
    }
}
