//! Attacks on STIX fidelity, context objects, the TAXII listener and feeds in, each
//! against a real `entente serve` process over HTTPS: ids written in an object's
//! properties reveal nothing the caller may not see, an object cannot claim another
//! node as its creator, a property given twice is refused however the envelope comes,
//! a feed can neither replace what another source published nor claim another
//! source's tag, and a listing records in the ledger only the items it serves.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use entente::NodeId;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::https::{TAXII, get, indicator, objects_path, post, tls};
use common::{Pki, TaxiiNode, node_section, serve_taxii};

const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
const AMBER: &str = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421";
const RED: &str = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1";
const CLEAR: &str = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487";

/// Upper bound for anything the tests wait for.
const DEADLINE: Duration = Duration::from_secs(60);

/// A node (redmond.hq) with a peer, a GREEN researcher, an analyst and a TAXII listener;
/// `extra` is appended (feeds).
fn write_config(pki: &Pki, extra: &str) -> std::path::PathBuf {
    write_config_with_body(pki, extra, 65536)
}

/// [`write_config`] with another `taxii.max_body_bytes`.
fn write_config_with_body(pki: &Pki, extra: &str, max_body_bytes: usize) -> std::path::PathBuf {
    let hq = NodeId::new("redmond.hq").unwrap();
    let mut text = node_section(pki, &hq, &pki.path().join("data"));
    text.push_str(
        "\n[[peer]]\nid = \"berlin.office\"\naddress = \"127.0.0.1:1\"\n\
         \n[[client]]\nid = \"researcher.uni-x\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"GREEN\"\n\
         \n[[client]]\nid = \"analyst.soc\"\nrole = \"analyst\"\n",
    );
    text.push_str(&format!(
        "\n[taxii]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = {max_body_bytes}\n"
    ));
    text.push_str(extra);
    let path = pki.path().join("redmond.hq.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn federation() -> Pki {
    let pki = Pki::new();
    pki.node("redmond.hq");
    pki.node("berlin.office");
    pki.client("researcher.uni-x");
    pki.client("analyst.soc");
    pki
}

/// A node started on `write_config(.., "")`: its PKI, the node, the analyst's and the
/// researcher's TLS clients and the collection's objects path.
async fn start() -> (
    Pki,
    TaxiiNode,
    Arc<rustls::ClientConfig>,
    Arc<rustls::ClientConfig>,
    String,
) {
    let pki = federation();
    let node = serve_taxii(&write_config(&pki, ""));
    let analyst = tls(&pki, "analyst.soc");
    let researcher = tls(&pki, "researcher.uni-x");
    let objects = objects_path(&analyst, &node).await;
    (pki, node, analyst, researcher, objects)
}

/// Every item id `tls` can list (one page is enough for these tests), without the
/// marking definitions and identities served with them.
async fn listed_ids(
    tls: &Arc<rustls::ClientConfig>,
    node: &TaxiiNode,
    objects: &str,
) -> BTreeSet<String> {
    let reply = get(tls, node.taxii, &format!("{objects}?limit=1000")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["objects"]
        .as_array()
        .unwrap()
        .iter()
        // The definitions a listing serves with its items (markings, the origin nodes'
        // identities, the extension a revocation uses) are not items themselves.
        .filter(|o| {
            let served_with = match o["type"].as_str().unwrap() {
                "marking-definition" | "extension-definition" => true,
                "identity" => {
                    o["created"] == "2020-01-01T00:00:00.000Z"
                        && o["description"].as_str().is_some_and(|d| {
                            d.starts_with("Entente ") || d.starts_with("The Entente ")
                        })
                }
                _ => false,
            };
            !served_with
        })
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------
// Context: ids written in an object's properties.

/// Rule 7 judged only a relationship's ends and a report's `object_refs`. Any other
/// property can carry an id too (`sample_refs`, an `x_` property, the description), and
/// an export or TAXII answer carries them as written: a GREEN object naming an AMBER
/// indicator told a GREEN partner that the indicator exists, and its id. Such an
/// object is now judged by every held item whose id it carries, through TAXII and gRPC
/// alike; ids of objects the node does not hold, and an object's own id, hold nothing
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_carried_in_properties_are_judged_like_references() {
    const SECRET: &str = "indicator--a1a1a1a1-0000-4000-8000-000000000001";
    const PUBLIC: &str = "indicator--a1a1a1a1-0000-4000-8000-000000000002";
    const NAMING_IN_X: &str = "malware--a1a1a1a1-0000-4000-8000-000000000003";
    const NAMING_IN_TEXT: &str = "indicator--a1a1a1a1-0000-4000-8000-000000000004";
    const NAMING_OTHERS: &str = "tool--a1a1a1a1-0000-4000-8000-000000000005";
    const ABSENT: &str = "indicator--a1a1a1a1-0000-4000-8000-0000000000ff";
    let (pki, node, analyst, researcher, objects) = start().await;

    let mut naming_in_text = indicator(NAMING_IN_TEXT, "text.example", GREEN);
    naming_in_text["description"] = json!(format!(
        "Seen together with {} last week",
        SECRET.to_uppercase()
    ));
    let envelope = json!({ "objects": [
        indicator(SECRET, "secret.example", AMBER),
        indicator(PUBLIC, "public.example", GREEN),
        {
            "type": "malware", "spec_version": "2.1", "id": NAMING_IN_X,
            "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
            "name": "Loader", "is_family": true, "object_marking_refs": [GREEN],
            "x_vendor": { "seen_with_refs": [PUBLIC, SECRET] },
        },
        naming_in_text,
        {
            "type": "tool", "spec_version": "2.1", "id": NAMING_OTHERS,
            "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
            "name": "Scanner", "object_marking_refs": [GREEN],
            "x_related_refs": [PUBLIC, ABSENT, NAMING_OTHERS],
        },
    ]})
    .to_string();
    let posted = post(&analyst, node.taxii, &objects, &envelope).await;
    assert_eq!(posted.status, 202, "{}", posted.text());
    assert_eq!(
        posted.json()["success_count"],
        json!(5),
        "{}",
        posted.text()
    );

    // The analyst sees everything; the GREEN researcher neither the AMBER indicator
    // nor the two objects that name it.
    let everything: BTreeSet<String> = [SECRET, PUBLIC, NAMING_IN_X, NAMING_IN_TEXT, NAMING_OTHERS]
        .map(str::to_owned)
        .into();
    assert_eq!(listed_ids(&analyst, &node, &objects).await, everything);
    let green: BTreeSet<String> = [PUBLIC, NAMING_OTHERS].map(str::to_owned).into();
    let seen = listed_ids(&researcher, &node, &objects).await;
    assert_eq!(seen, green);
    let listed = get(&researcher, node.taxii, &format!("{objects}?limit=1000"))
        .await
        .text();
    assert!(
        !listed.to_ascii_lowercase().contains(&SECRET[11..]),
        "{listed}"
    );
    // Each is answered as an absent object, with the same body.
    let absent = get(&researcher, node.taxii, &format!("{objects}{ABSENT}/")).await;
    assert_eq!(absent.status, 404);
    for id in [NAMING_IN_X, NAMING_IN_TEXT] {
        for suffix in ["", "versions/"] {
            let withheld = get(&researcher, node.taxii, &format!("{objects}{id}/{suffix}")).await;
            assert_eq!(
                (withheld.status, withheld.text()),
                (absent.status, absent.text()),
                "{id}"
            );
        }
        let matched = get(
            &researcher,
            node.taxii,
            &format!("{objects}?match[id]={id}"),
        )
        .await
        .json();
        assert_eq!(matched["objects"], json!([]), "{id}");
    }

    // gRPC says the same.
    let client = common::taxii_node_client(&pki, &node, "researcher.uni-x").await;
    for id in [NAMING_IN_X, NAMING_IN_TEXT, SECRET] {
        assert!(client.get(id).await.unwrap().is_none(), "{id}");
    }
    assert!(client.get(NAMING_OTHERS).await.unwrap().is_some());
}

/// The UUID of an item withheld from a partner, written without its type, under
/// another type than the one held, or in a URL, told that partner the UUID. Such a
/// UUID is now judged like an id: the object that writes it goes only where the item
/// held under it goes. A UUID the node does not hold, and an object's own UUID, hold
/// nothing back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uuids_written_bare_or_under_another_type_are_judged_like_references() {
    const SECRET: &str = "indicator--c3c3c3c3-0000-4000-8000-000000000001";
    const BARE: &str = "indicator--c3c3c3c3-0000-4000-8000-000000000002";
    const OTHER_TYPE: &str = "tool--c3c3c3c3-0000-4000-8000-000000000003";
    const IN_URL: &str = "malware--c3c3c3c3-0000-4000-8000-000000000004";
    const HARMLESS: &str = "indicator--c3c3c3c3-0000-4000-8000-000000000005";
    let secret_uuid = &SECRET["indicator--".len()..];
    let (_pki, node, analyst, researcher, objects) = start().await;

    let mut bare = indicator(BARE, "bare.example", GREEN);
    bare["description"] = json!(format!("Same campaign as {secret_uuid}"));
    let mut harmless = indicator(HARMLESS, "harmless.example", GREEN);
    harmless["description"] = json!(format!(
        "Not held: c3c3c3c3-0000-4000-8000-0000000000ff; itself: {}",
        &HARMLESS["indicator--".len()..]
    ));
    let envelope = json!({ "objects": [
        indicator(SECRET, "secret.example", AMBER),
        bare,
        {
            "type": "tool", "spec_version": "2.1", "id": OTHER_TYPE,
            "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
            "name": "Scanner", "object_marking_refs": [GREEN],
            "x_seen_with": format!("malware--{secret_uuid}"),
        },
        {
            "type": "malware", "spec_version": "2.1", "id": IN_URL,
            "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
            "name": "Loader", "is_family": true, "object_marking_refs": [GREEN],
            "external_references": [{
                "source_name": "intel",
                "url": format!("https://intel.example/objects/{}", secret_uuid.to_uppercase()),
            }],
        },
        harmless,
    ]})
    .to_string();
    let posted = post(&analyst, node.taxii, &objects, &envelope).await;
    assert_eq!(posted.status, 202, "{}", posted.text());
    assert_eq!(
        posted.json()["success_count"],
        json!(5),
        "{}",
        posted.text()
    );

    let everything: BTreeSet<String> = [SECRET, BARE, OTHER_TYPE, IN_URL, HARMLESS]
        .map(str::to_owned)
        .into();
    assert_eq!(listed_ids(&analyst, &node, &objects).await, everything);
    let green: BTreeSet<String> = [HARMLESS].map(str::to_owned).into();
    assert_eq!(listed_ids(&researcher, &node, &objects).await, green);
    let listed = get(&researcher, node.taxii, &format!("{objects}?limit=1000"))
        .await
        .text();
    assert!(
        !listed.to_ascii_lowercase().contains(secret_uuid),
        "{listed}"
    );
}

// ---------------------------------------------------------------------------------
// Provenance: `created_by_ref`.

/// An export fills `created_by_ref` with the identity of the item's origin and adds
/// that identity, described as the origin of what it signs; a kept `created_by_ref`
/// stays as published. An analyst of this node (or a peer) could name the identity of
/// another node of the federation, and partners' tools showed that node as the
/// author of an item it never signed. Naming a known node other than the origin is
/// refused now; the node's own identity and outside identities are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_cannot_name_another_node_as_its_creator() {
    const FORGED: &str = "indicator--b2b2b2b2-0000-4000-8000-000000000001";
    const OWN: &str = "indicator--b2b2b2b2-0000-4000-8000-000000000002";
    const VENDOR: &str = "indicator--b2b2b2b2-0000-4000-8000-000000000003";
    const FORGED_CONTEXT: &str = "malware--b2b2b2b2-0000-4000-8000-000000000004";
    const VENDOR_IDENTITY: &str = "identity--b2b2b2b2-0000-4000-8000-0000000000aa";
    let (_pki, node, analyst, _, objects) = start().await;
    let berlin = entente::interop::identity_id("berlin.office");
    let own = entente::interop::identity_id("redmond.hq");

    let with_creator = |id: &str, domain: &str, creator: &str| {
        let mut object = indicator(id, domain, GREEN);
        object["created_by_ref"] = json!(creator);
        object
    };
    let forged_context = json!({
        "type": "malware", "spec_version": "2.1", "id": FORGED_CONTEXT,
        "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
        "name": "Loader", "is_family": true, "object_marking_refs": [GREEN],
        "created_by_ref": berlin,
    });
    // Each alone: a write that the publishing rules refuse is refused whole.
    for (object, stored) in [
        (with_creator(FORGED, "forged.example", &berlin), false),
        (forged_context, false),
        (with_creator(OWN, "own.example", &own), true),
        (
            with_creator(VENDOR, "vendor.example", VENDOR_IDENTITY),
            true,
        ),
    ] {
        let posted = post(
            &analyst,
            node.taxii,
            &objects,
            &json!({ "objects": [object] }).to_string(),
        )
        .await;
        assert_eq!(posted.status, 202, "{}", posted.text());
        let status = posted.json();
        assert_eq!(
            status["success_count"],
            json!(u8::from(stored)),
            "{object}: {status}"
        );
        if !stored {
            let message = status["failures"][0]["message"].as_str().unwrap();
            assert!(
                message.contains("created_by_ref") && message.contains("berlin.office"),
                "{message}"
            );
        }
    }
    for id in [FORGED, FORGED_CONTEXT] {
        assert_eq!(
            get(&analyst, node.taxii, &format!("{objects}{id}/"))
                .await
                .status,
            404
        );
    }
    for (id, creator) in [(OWN, own.as_str()), (VENDOR, VENDOR_IDENTITY)] {
        let object = get(&analyst, node.taxii, &format!("{objects}{id}/"))
            .await
            .json();
        assert_eq!(object["objects"][0]["created_by_ref"], json!(creator));
    }
}

// ---------------------------------------------------------------------------------
// Input: a property given twice.

/// A file with a property given twice in one object is refused (parsers disagree on
/// which one counts). An envelope POSTed to TAXII was first read into a JSON value,
/// which keeps the last of the two silently, and only then handed to the STIX import:
/// an indicator that said AMBER, then CLEAR, was published CLEAR, though a tool that
/// reads the first saw AMBER. The same held for names given twice deeper in an object
/// (a granular marking's `marking_ref`), in files too. Both are refused now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_property_given_twice_is_refused_through_taxii() {
    const TWICE: &str = "indicator--c3c3c3c3-0000-4000-8000-000000000001";
    const NESTED: &str = "indicator--c3c3c3c3-0000-4000-8000-000000000002";
    let (_pki, node, analyst, researcher, objects) = start().await;

    let twice = format!(
        r#"{{"objects":[{{"type":"indicator","spec_version":"2.1","id":"{TWICE}","created":"2025-01-01T00:00:00.000Z","modified":"2025-01-02T00:00:00.000Z","pattern":"[domain-name:value = 'twice.example']","pattern_type":"stix","valid_from":"2025-01-01T00:00:00Z","object_marking_refs":["{AMBER}"],"object_marking_refs":["{CLEAR}"]}}]}}"#
    );
    let nested = format!(
        r#"{{"objects":[{{"type":"indicator","spec_version":"2.1","id":"{NESTED}","created":"2025-01-01T00:00:00.000Z","modified":"2025-01-02T00:00:00.000Z","pattern":"[domain-name:value = 'nested.example']","pattern_type":"stix","valid_from":"2025-01-01T00:00:00Z","object_marking_refs":["{CLEAR}"],"granular_markings":[{{"selectors":["pattern"],"marking_ref":"{RED}","marking_ref":"{CLEAR}"}}]}}]}}"#
    );
    for (body, id) in [(twice, TWICE), (nested, NESTED)] {
        let posted = post(&analyst, node.taxii, &objects, &body).await;
        let stored = posted.status == 202 && posted.json()["success_count"] == json!(1);
        assert!(!stored, "{id} was published: {}", posted.text());
        assert!(
            posted.text().contains("given twice"),
            "{id}: {}",
            posted.text()
        );
        for who in [&analyst, &researcher] {
            assert_eq!(
                get(who, node.taxii, &format!("{objects}{id}/"))
                    .await
                    .status,
                404,
                "{id}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Feeds: a hostile TAXII server.

/// A TAXII collection served over plain HTTP on loopback: one answer per connection.
#[derive(Clone, Default)]
struct Collection {
    objects: Arc<Mutex<Vec<Value>>>,
    requests: Arc<Mutex<HashMap<String, usize>>>,
    /// Each answer one new object, `more` and a new `next`, and no date headers.
    endless: bool,
}

async fn serve_collection(collection: Collection) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let collection = collection.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let target = head.split_whitespace().nth(1).unwrap_or("/");
                let path = target.split('?').next().unwrap_or("/").to_owned();
                let asked = {
                    let mut requests = collection.requests.lock().unwrap();
                    let asked = requests.entry(path.clone()).or_default();
                    *asked += 1;
                    *asked
                };
                let body = if collection.endless {
                    let id = format!("indicator--f6f6f6f6-0000-4000-8000-{asked:012x}");
                    json!({
                        "more": true,
                        "next": format!("page-{asked}"),
                        "objects": [indicator(&id, &format!("host-{asked}.example"), GREEN)],
                    })
                } else {
                    json!({
                        "more": false,
                        "objects": *collection.objects.lock().unwrap(),
                    })
                }
                .to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {TAXII}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// A node whose feed `evil-feed` polls a collection served by the test, with the
/// collection's objects path on the node's TAXII listener.
async fn node_with_feed(pki: &Pki, collection: &Collection) -> (TaxiiNode, String) {
    node_with_feed_settings(pki, collection, "interval = \"1s\"\n").await
}

async fn node_with_feed_settings(
    pki: &Pki,
    collection: &Collection,
    settings: &str,
) -> (TaxiiNode, String) {
    let base = serve_collection(collection.clone()).await;
    let config = write_config(
        pki,
        &format!(
            "\n[[feed]]\nname = \"evil-feed\"\nkind = \"taxii\"\nurl = \"{base}{FEED_PATH}\"\ntlp = \"green\"\n{settings}"
        ),
    );
    let node = serve_taxii(&config);
    let objects = objects_path(&tls(pki, "analyst.soc"), &node).await;
    (node, objects)
}

const FEED_PATH: &str = "/api1/collections/c/objects/";

/// Serves `objects` from the collection and waits for two polls of it: the first took
/// them in.
async fn offer(collection: &Collection, objects: Vec<Value>) {
    *collection.objects.lock().unwrap() = objects;
    let asked = collection.asked();
    wait_until("two polls of the feed", || {
        let collection = collection.clone();
        async move { (collection.asked() >= asked + 2).then_some(()) }
    })
    .await;
}

impl Collection {
    fn asked(&self) -> usize {
        self.requests
            .lock()
            .unwrap()
            .get(FEED_PATH)
            .copied()
            .unwrap_or(0)
    }
}

/// Every item of this node comes from one of its sources (an analyst, a feed), all
/// signed as the node's own, and a feed could publish a newer version of any of them:
/// a hostile or compromised TAXII server that learnt the id of an analyst's RED
/// indicator replaced it with its own CLEAR content (or revoked it). A feed now
/// updates and revokes only what it published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_cannot_replace_what_another_source_published() {
    const ANALYSTS: &str = "indicator--d4d4d4d4-0000-4000-8000-000000000001";
    const FEEDS: &str = "indicator--d4d4d4d4-0000-4000-8000-000000000002";
    let pki = federation();
    let collection = Collection::default();
    let (node, objects) = node_with_feed(&pki, &collection).await;
    let analyst = tls(&pki, "analyst.soc");

    // The analyst publishes a RED indicator.
    let posted = post(
        &analyst,
        node.taxii,
        &objects,
        &json!({ "objects": [indicator(ANALYSTS, "target.example", RED)] }).to_string(),
    )
    .await;
    assert_eq!(
        posted.json()["success_count"],
        json!(1),
        "{}",
        posted.text()
    );

    // The feed offers a newer CLEAR version of it, and one of its own, which it then
    // updates: its own items it may update.
    let mut replacement = indicator(ANALYSTS, "decoy.example", CLEAR);
    replacement["modified"] = json!("2025-06-01T00:00:00.000Z");
    offer(
        &collection,
        vec![replacement.clone(), indicator(FEEDS, "feed.example", GREEN)],
    )
    .await;
    let mut update = indicator(FEEDS, "feed-2.example", GREEN);
    update["modified"] = json!("2025-06-01T00:00:00.000Z");
    offer(&collection, vec![replacement, update]).await;
    let feeds = get(&analyst, node.taxii, &format!("{objects}{FEEDS}/"))
        .await
        .json();
    assert_eq!(
        feeds["objects"][0]["pattern"],
        json!("[domain-name:value = 'feed-2.example']"),
        "{feeds}"
    );

    // The analyst's indicator is as the analyst published it.
    let held = get(&analyst, node.taxii, &format!("{objects}{ANALYSTS}/"))
        .await
        .json();
    let held = &held["objects"][0];
    assert_eq!(
        held["pattern"],
        json!("[domain-name:value = 'target.example']"),
        "{held}"
    );
    assert_eq!(held["object_marking_refs"], json!([RED]), "{held}");
}

/// Every item of a feed carries the tag `source:<feed>`, which partners' policies use
/// (`allow_tags = ["source:trusted-intel"]` gives a partner that feed's items only).
/// A feed's objects could carry another source's tag in their labels, and a partner
/// allowed only that source received them. Dropping the label instead would defeat a
/// `deny_tags` that names it (`source:informant`): an object carrying a `source:` tag
/// its feed's configuration does not give is skipped; one the configuration gives is
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_cannot_claim_another_sources_tag() {
    const CLAIMS: &str = "indicator--e5e5e5e5-0000-4000-8000-000000000002";
    const GIVEN: &str = "indicator--e5e5e5e5-0000-4000-8000-000000000003";
    let pki = federation();
    let collection = Collection::default();
    // A source: tag the operator gives the feed is kept.
    let (node, objects) = node_with_feed_settings(
        &pki,
        &collection,
        "interval = \"1s\"\ntags = [\"source:vendor-mirror\"]\n",
    )
    .await;
    let analyst = tls(&pki, "analyst.soc");
    let mut claims = indicator(CLAIMS, "feed.example", GREEN);
    claims["labels"] = json!(["source:trusted-intel", "Source:Analysts", "phishing"]);
    let mut given = indicator(GIVEN, "given.example", GREEN);
    given["labels"] = json!(["source:vendor-mirror", "phishing"]);
    offer(&collection, vec![claims, given]).await;
    let held = get(&analyst, node.taxii, &format!("{objects}{GIVEN}/"))
        .await
        .json();
    let held = &held["objects"][0];
    let labels: BTreeSet<&str> = held["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        BTreeSet::from(["phishing", "source:evil-feed", "source:vendor-mirror"]),
        "{held}"
    );
    let skipped = get(&analyst, node.taxii, &format!("{objects}{CLAIMS}/")).await;
    assert_eq!(skipped.status, 404, "{}", skipped.text());
}

/// `max_objects_per_poll` bounds what one poll takes, but a poll stopped only at a page
/// boundary: a server that never comes to one (no `X-TAXII-Date-Added-Last`, or every
/// page dated alike), always saying `more` with a new `next`, was paged for 10,000
/// pages, every page's objects signed and stored (up to `max_response_bytes` each). The
/// poll now ends, as failed, at twice the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_that_never_comes_to_a_boundary_is_cut_at_twice_its_limit() {
    let pki = federation();
    let collection = Collection {
        endless: true,
        ..Collection::default()
    };
    let (node, _) = node_with_feed_settings(
        &pki,
        &collection,
        "interval = \"1h\"\nmax_objects_per_poll = 5\n",
    )
    .await;
    let operator = common::taxii_node_client(&pki, &node, "redmond.hq").await;
    let status = wait_until("a failed poll", || {
        let operator = &operator;
        async move {
            let feeds = operator.feeds().await.unwrap().feeds;
            let feed = feeds.into_iter().find(|f| f.name == "evil-feed")?;
            (feed.failures >= 1).then_some(feed)
        }
    })
    .await;
    assert!(status.last_error.contains("no page boundary"), "{status:?}");
    assert!(status.objects_fetched <= 10 * status.polls, "{status:?}");
}

/// The peak resident size of process `pid`, KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A body is bounded in bytes before it is read (`taxii.max_body_bytes`), but reading it
/// as JSON took far more: `[]` is two bytes of text and a 32-byte value once read, and
/// the envelope was read twice (as a value, then as STIX) while both were held. Two
/// bodies of 8 MiB of empty arrays, sent at once by one analyst (its two publish
/// slots), raised the node's peak memory by hundreds of MiB. A body of more than a
/// million values is now refused as it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taxii_body_of_tiny_values_is_refused_before_it_is_held_whole() {
    let pki = federation();
    let config = write_config_with_body(&pki, "", 8 * 1024 * 1024);
    let node = serve_taxii(&config);
    let analyst = tls(&pki, "analyst.soc");
    let objects = objects_path(&analyst, &node).await;
    let pid = node.child.id();
    let before = peak_kib(pid);
    let count = (8 * 1024 * 1024 - 100) / 3;
    let body = format!(
        r#"{{"objects":[{{"type":"indicator","x_tiny":[{}]}}]}}"#,
        vec!["[]"; count].join(",")
    );
    assert!(body.len() <= 8 * 1024 * 1024);
    let (first, second) = tokio::join!(
        post(&analyst, node.taxii, &objects, &body),
        post(&analyst, node.taxii, &objects, &body)
    );
    let grown_mib = peak_kib(pid).saturating_sub(before) / 1024;
    println!("peak resident size grew by {grown_mib} MiB");
    assert!(
        grown_mib < 250,
        "peak resident size grew by {grown_mib} MiB"
    );
    for reply in [first, second] {
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert!(
            reply.text().contains("more JSON values"),
            "{}",
            reply.text()
        );
    }
}

// ---------------------------------------------------------------------------------
// Context: identities, vulnerabilities, courses of action and sightings, and what
// context references before it is held.

fn context_object(ty: &str, id: &str, marking: &str, extra: Value) -> Value {
    let mut object = json!({
        "type": ty, "spec_version": "2.1", "id": id,
        "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
        "object_marking_refs": [marking],
    });
    for (key, value) in extra.as_object().unwrap() {
        object[key] = value.clone();
    }
    object
}

/// Identities, vulnerabilities, courses of action and sightings travel as context under
/// the same policy as the rest. A relationship, a sighting or a report that arrives
/// before what it references used to pass when the reference was not held (a report
/// always did), so a GREEN report naming an AMBER indicator published after it told a
/// GREEN partner of the indicator. Whatever the order, an object that references
/// another is withheld until that other is held, and then judged with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_are_judged_whatever_order_they_arrive_in() {
    const SECRET_A: &str = "indicator--b2b2b2b2-0000-4000-8000-000000000001";
    const SECRET_B: &str = "indicator--b2b2b2b2-0000-4000-8000-000000000002";
    const SECRET_C: &str = "indicator--b2b2b2b2-0000-4000-8000-000000000003";
    const PUBLIC: &str = "indicator--b2b2b2b2-0000-4000-8000-000000000004";
    const MALWARE: &str = "malware--b2b2b2b2-0000-4000-8000-000000000005";
    const REL_EARLY: &str = "relationship--b2b2b2b2-0000-4000-8000-000000000006";
    const SIGHTING_EARLY: &str = "sighting--b2b2b2b2-0000-4000-8000-000000000007";
    const REPORT_EARLY: &str = "report--b2b2b2b2-0000-4000-8000-000000000008";
    const REL_LATE: &str = "relationship--b2b2b2b2-0000-4000-8000-000000000009";
    const REL_PUBLIC: &str = "relationship--b2b2b2b2-0000-4000-8000-00000000000a";
    const VICTIM: &str = "identity--b2b2b2b2-0000-4000-8000-00000000000b";
    const CERT: &str = "identity--b2b2b2b2-0000-4000-8000-00000000000c";
    const SIGHTING_AT_VICTIM: &str = "sighting--b2b2b2b2-0000-4000-8000-00000000000d";
    const SIGHTING_AT_CERT: &str = "sighting--b2b2b2b2-0000-4000-8000-00000000000e";
    const CVE: &str = "vulnerability--b2b2b2b2-0000-4000-8000-00000000000f";
    const COA: &str = "course-of-action--b2b2b2b2-0000-4000-8000-000000000010";
    let (_pki, node, analyst, researcher, objects) = start().await;
    let relationship = |id: &str, source: &str, target: &str| {
        context_object(
            "relationship",
            id,
            GREEN,
            json!({"relationship_type": "indicates", "source_ref": source, "target_ref": target}),
        )
    };
    let sighting = |id: &str, of: &str, at: &str| {
        context_object(
            "sighting",
            id,
            GREEN,
            json!({"sighting_of_ref": of, "where_sighted_refs": [at], "count": 3}),
        )
    };
    let publish = |objects_list: Vec<Value>| {
        let analyst = analyst.clone();
        let path = objects.clone();
        let taxii = node.taxii;
        async move {
            let count = objects_list.len();
            let envelope = json!({ "objects": objects_list }).to_string();
            let posted = post(&analyst, taxii, &path, &envelope).await;
            assert_eq!(posted.status, 202, "{}", posted.text());
            assert_eq!(
                posted.json()["success_count"],
                json!(count),
                "{}",
                posted.text()
            );
        }
    };

    // First the context, naming indicators not held yet (all GREEN itself).
    publish(vec![
        context_object("malware", MALWARE, GREEN, json!({"name": "Loader", "is_family": true})),
        context_object("identity", CERT, GREEN, json!({"name": "CERT", "identity_class": "organization"})),
        context_object("identity", VICTIM, AMBER, json!({"name": "Victim", "identity_class": "organization"})),
        context_object("vulnerability", CVE, GREEN, json!({"name": "CVE-2025-0001"})),
        context_object("course-of-action", COA, GREEN, json!({"name": "Patch"})),
        relationship(REL_EARLY, SECRET_A, MALWARE),
        sighting(SIGHTING_EARLY, SECRET_B, CERT),
        context_object("report", REPORT_EARLY, GREEN, json!({"name": "Wave", "published": "2025-04-01T00:00:00Z", "object_refs": [SECRET_C, MALWARE]})),
        relationship(REL_PUBLIC, PUBLIC, MALWARE),
        sighting(SIGHTING_AT_VICTIM, PUBLIC, VICTIM),
        sighting(SIGHTING_AT_CERT, PUBLIC, CERT),
    ])
    .await;
    let shared: BTreeSet<String> = [MALWARE, CERT, CVE, COA].map(str::to_owned).into();
    // Nothing that references an object not held is listed, to anyone but the node.
    assert_eq!(listed_ids(&researcher, &node, &objects).await, shared);

    // Then the indicators: three AMBER, one GREEN; and a relationship naming an AMBER
    // indicator held already.
    publish(vec![
        indicator(SECRET_A, "a.secret.example", AMBER),
        indicator(SECRET_B, "b.secret.example", AMBER),
        indicator(SECRET_C, "c.secret.example", AMBER),
        indicator(PUBLIC, "public.example", GREEN),
    ])
    .await;
    publish(vec![relationship(REL_LATE, SECRET_A, MALWARE)]).await;

    // The GREEN researcher sees the GREEN indicator, the objects naming only what it may
    // see, and nothing that names an AMBER indicator or the AMBER victim, in either order.
    let expected: BTreeSet<String> = [
        MALWARE,
        CERT,
        CVE,
        COA,
        PUBLIC,
        REL_PUBLIC,
        SIGHTING_AT_CERT,
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(listed_ids(&researcher, &node, &objects).await, expected);
    let listed = get(&researcher, node.taxii, &format!("{objects}?limit=1000"))
        .await
        .text()
        .to_ascii_lowercase();
    for secret in [SECRET_A, SECRET_B, SECRET_C, VICTIM] {
        assert!(!listed.contains(&secret[secret.len() - 36..]), "{secret}");
    }
    // Each withheld one answers as an absent object.
    let absent = get(
        &researcher,
        node.taxii,
        &format!("{objects}relationship--b2b2b2b2-0000-4000-8000-0000000000ff/"),
    )
    .await;
    assert_eq!(absent.status, 404);
    for id in [
        REL_EARLY,
        SIGHTING_EARLY,
        REPORT_EARLY,
        REL_LATE,
        SIGHTING_AT_VICTIM,
    ] {
        let withheld = get(&researcher, node.taxii, &format!("{objects}{id}/")).await;
        assert_eq!(
            (withheld.status, withheld.text()),
            (absent.status, absent.text()),
            "{id}"
        );
    }
    // The analyst sees everything, the sighting with its references as published.
    let everything = listed_ids(&analyst, &node, &objects).await;
    assert_eq!(everything.len(), 16, "{everything:?}");
    let sighted = get(
        &analyst,
        node.taxii,
        &format!("{objects}{SIGHTING_AT_CERT}/"),
    )
    .await
    .json();
    let object = &sighted["objects"][0];
    assert_eq!(object["sighting_of_ref"], json!(PUBLIC), "{sighted}");
    assert_eq!(object["where_sighted_refs"], json!([CERT]), "{sighted}");

    // An identity cannot stand for a node of the federation: the export writes those.
    let impostor = entente::model::origin_identity_id("berlin.office");
    let envelope = json!({ "objects": [context_object(
        "identity",
        &impostor,
        GREEN,
        json!({"name": "berlin.office", "identity_class": "organization"}),
    )]})
    .to_string();
    let posted = post(&analyst, node.taxii, &objects, &envelope).await;
    assert_eq!(
        posted.json()["success_count"],
        json!(0),
        "{}",
        posted.text()
    );
    assert!(
        posted.text().contains("export identity of berlin.office"),
        "{}",
        posted.text()
    );
}

// ---------------------------------------------------------------------------------
// The envelope read once, and what a listing records.

/// A name given twice is refused at every depth of a TAXII envelope: inside an element
/// of `objects` that is an array as well. Otherwise the same envelope, which parsers
/// read differently, is published in part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_given_twice_inside_an_array_element_refuses_the_envelope() {
    const ID: &str = "indicator--d6d6d6d6-0000-4000-8000-000000000001";
    let (_pki, node, analyst, _, objects) = start().await;
    let body = json!({"objects": [[{"a": 1}], indicator(ID, "twice-in-array.example", GREEN)]})
        .to_string()
        .replacen(r#"{"a":1}"#, r#"{"a":1,"a":2}"#, 1);
    assert!(body.contains(r#""a":1,"a":2"#), "{body}");
    let posted = post(&analyst, node.taxii, &objects, &body).await;
    assert_eq!(posted.status, 400, "{}", posted.text());
    assert!(posted.text().contains("given twice"), "{}", posted.text());
    assert_eq!(
        get(&analyst, node.taxii, &format!("{objects}{ID}/"))
            .await
            .status,
        404
    );
}

/// A listing filtered by `match[type]` serves only the objects of those types; the
/// disclosure ledger must record those, not every item the store read for the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_records_only_the_items_it_serves() {
    const INDICATOR: &str = "indicator--e7e7e7e7-0000-4000-8000-000000000001";
    const MALWARE: &str = "malware--e7e7e7e7-0000-4000-8000-000000000002";
    let (pki, node, analyst, researcher, objects) = start().await;
    let malware = json!({
        "type": "malware", "spec_version": "2.1", "id": MALWARE,
        "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
        "name": "dropper", "is_family": true,
        "object_marking_refs": [GREEN],
    });
    let body = json!({"objects": [indicator(INDICATOR, "served.example", GREEN), malware]});
    let posted = post(&analyst, node.taxii, &objects, &body.to_string()).await;
    assert_eq!(posted.status, 202, "{}", posted.text());
    assert_eq!(
        posted.json()["success_count"],
        json!(2),
        "{}",
        posted.text()
    );

    let listed = get(
        &researcher,
        node.taxii,
        &format!("{objects}?match[type]=malware"),
    )
    .await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let ids: Vec<String> = listed.json()["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, vec![MALWARE.to_owned()], "{}", listed.text());

    let mut delivered = BTreeSet::new();
    for record in common::ledger_records(&pki, &node, "researcher.uni-x").await {
        assert_eq!(record.path, "taxii-objects");
        for delivery in &record.deliveries {
            delivered.extend(delivery.indices.iter().copied());
        }
    }
    // The envelope's objects are the bundle's items 0 (the indicator) and 1 (the
    // malware); only the malware was served.
    assert_eq!(delivered, BTreeSet::from([1]));
}
