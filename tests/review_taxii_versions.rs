//! How the TAXII listener of a real `entente serve` process answers for an object's
//! versions, over HTTPS: the objects and manifest listings honour `match[version]`
//! (`first`, `all`, timestamps) for the ids of `match[id]`, each version passing the
//! same policy gate as on the versions resource, and refuse it without `match[id]`
//! rather than answer another version than the one asked for.

mod common;

use std::sync::Arc;

use serde_json::{Value, json};

use common::https::{Reply, get, indicator, post_objects, tls};
use common::{Pki, TaxiiNode, node_section, serve_taxii};

const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
const AMBER: &str = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421";

/// Item types: what a page lists apart from the marking definitions and identities
/// served with its items.
const SUPPORTING: [&str; 3] = ["marking-definition", "identity", "extension-definition"];

/// A node (redmond.hq) with a GREEN read-only researcher, an analyst that sees
/// everything and a TAXII listener, as its own process; and the collection's path.
async fn start() -> (Pki, TaxiiNode, String) {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.client("researcher.uni-x");
    pki.client("analyst.soc");
    let mut text = node_section(&pki, &hq, &pki.path().join("data"));
    text.push_str(
        "\n[[client]]\nid = \"researcher.uni-x\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"GREEN\"\n\
         \n[[client]]\nid = \"analyst.soc\"\nrole = \"analyst\"\n\
         \n[taxii]\nlisten = \"127.0.0.1:0\"\n",
    );
    let path = pki.path().join("redmond.hq.toml");
    std::fs::write(&path, text).unwrap();
    let node = serve_taxii(&path);
    let analyst = tls(&pki, "analyst.soc");
    let listed = get(&analyst, node.taxii, "/api/collections/").await.json();
    let id = listed["collections"][0]["id"].as_str().unwrap().to_owned();
    (pki, node, format!("/api/collections/{id}/"))
}

fn id_of(n: u32) -> String {
    format!("indicator--{n:08x}-0000-4000-8000-{n:012x}")
}

fn day(d: u32) -> String {
    format!("2025-01-{d:02}T00:00:00.000Z")
}

/// Version `d` (its `modified` on day `d`) of indicator `n`, under `marking`.
fn version(n: u32, marking: &str, d: u32) -> Value {
    let mut object = indicator(&id_of(n), &format!("host-{n}.example.org"), marking);
    object["modified"] = json!(day(d));
    object
}

/// The (id, version) of the items (not the objects served with them) of an objects or
/// manifest answer.
fn versions_listed(body: &Value) -> Vec<(String, String)> {
    body["objects"]
        .as_array()
        .unwrap_or_else(|| panic!("no objects: {body}"))
        .iter()
        .filter(|o| {
            let id = o["id"].as_str().unwrap();
            !SUPPORTING.contains(&id.split("--").next().unwrap())
        })
        .map(|o| {
            let version = o.get("version").or_else(|| o.get("modified")).unwrap();
            (
                o["id"].as_str().unwrap().to_owned(),
                version.as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A listing followed through `next` to its end: every (id, version) listed, and the
/// number of pages.
async fn follow(
    tls: &Arc<rustls::ClientConfig>,
    node: &TaxiiNode,
    query: &str,
) -> (Vec<(String, String)>, usize) {
    let mut listed = Vec::new();
    let mut next: Option<String> = None;
    for pages in 1..=50 {
        let path = match &next {
            None => query.to_owned(),
            Some(n) => format!("{query}&next={n}"),
        };
        let reply = get(tls, node.taxii, &path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        let body = reply.json();
        let page = versions_listed(&body);
        if !page.is_empty() {
            assert!(
                reply.header("x-taxii-date-added-first").is_some()
                    && reply.header("x-taxii-date-added-last").is_some(),
                "{path}: a page of objects without its date headers"
            );
        }
        listed.extend(page);
        match body["next"].as_str() {
            Some(n) if body["more"] == json!(true) => next = Some(n.to_owned()),
            _ => {
                assert_eq!(body["more"], json!(false), "{body}");
                return (listed, pages);
            }
        }
    }
    panic!("{query}: paging does not end");
}

fn pairs(list: &[(u32, u32)]) -> Vec<(String, String)> {
    list.iter().map(|(n, d)| (id_of(*n), day(*d))).collect()
}

/// TAXII 2.1 §3.4.2: `match[version]=first` asks for the earliest version, `all` for
/// every version, on Get Objects and Get Object Manifests. `stix2`'s
/// `TAXIICollectionSource.all_versions()` asks `objects/?match[id]=X&match[version]=all`.
/// The listings answered the latest version for both. They now select versions as the
/// object resource does, each passing the same policy gate (an AMBER first version is
/// not the GREEN researcher's, and a withheld id lists as an absent one); without
/// `match[id]`, such a filter is refused with 400 rather than answered with the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_serve_the_versions_match_version_asks_for() {
    let (pki, node, collection) = start().await;
    let analyst = tls(&pki, "analyst.soc");
    let researcher = tls(&pki, "researcher.uni-x");
    let objects = format!("{collection}objects/");
    let manifest = format!("{collection}manifest/");
    // 1: two GREEN versions. 2: AMBER, then lowered to GREEN. 3: AMBER only.
    for sent in [
        version(1, GREEN, 2),
        version(1, GREEN, 3),
        version(2, AMBER, 2),
        version(2, GREEN, 3),
        version(3, AMBER, 2),
    ] {
        let status = post_objects(&analyst, &node, &objects, vec![sent]).await;
        assert_eq!(status["failure_count"], json!(0), "{status}");
    }
    let (one, two, three) = (id_of(1), id_of(2), id_of(3));

    for listing in [&objects, &manifest] {
        let ask = |ids: &str, version: &str| {
            format!("{listing}?match[id]={ids}&match[version]={version}")
        };
        // The researcher: indicator 1's two versions; of indicator 2 only the GREEN one.
        assert_eq!(
            follow(&researcher, &node, &ask(&one, "first")).await.0,
            pairs(&[(1, 2)]),
            "{listing} first"
        );
        assert_eq!(
            follow(&researcher, &node, &ask(&one, "all")).await.0,
            pairs(&[(1, 2), (1, 3)]),
            "{listing} all"
        );
        assert_eq!(
            follow(&researcher, &node, &ask(&one, "last")).await.0,
            pairs(&[(1, 3)]),
            "{listing} last"
        );
        assert_eq!(
            follow(&researcher, &node, &ask(&one, &day(2))).await.0,
            pairs(&[(1, 2)]),
            "{listing} exact"
        );
        assert_eq!(
            follow(&researcher, &node, &ask(&two, "first")).await.0,
            pairs(&[(2, 3)]),
            "{listing}: the AMBER first version is not the researcher's"
        );
        assert_eq!(
            follow(&researcher, &node, &ask(&two, &day(2))).await.0,
            pairs(&[]),
            "{listing}: the AMBER version by its timestamp"
        );
        // Paged one object at a time across ids and within one id's versions.
        let (listed, pages) = follow(
            &researcher,
            &node,
            &format!("{}&limit=1", ask(&format!("{one},{three},{two}"), "all")),
        )
        .await;
        assert_eq!(listed, pairs(&[(1, 2), (1, 3), (2, 3)]), "{listing} paged");
        assert!(pages >= 3, "{listing}: {pages} pages of one object");
        // The analyst sees every version.
        assert_eq!(
            follow(&analyst, &node, &ask(&format!("{one},{two}"), "all"))
                .await
                .0,
            pairs(&[(1, 2), (1, 3), (2, 2), (2, 3)]),
            "{listing} analyst"
        );
        // A withheld id is answered as an absent one, under every filter.
        let absent = "indicator--0f0f0f0f-0000-4000-8000-0f0f0f0f0f0f";
        for version in ["first", "all", &day(2)] {
            let withheld = get(&researcher, node.taxii, &ask(&three, version)).await;
            let missing = get(&researcher, node.taxii, &ask(absent, version)).await;
            assert_eq!(withheld.status, 200, "{}", withheld.text());
            assert_eq!(
                (withheld.status, withheld.body.clone()),
                (missing.status, missing.body.clone()),
                "{listing} {version}"
            );
            assert_eq!(withheld.header("x-taxii-date-added-first"), None);
        }
        // Without match[id], a version other than the latest is refused, not answered
        // with the latest.
        for version in ["first", "all", "first,last", &day(2)] {
            let reply: Reply = get(
                &researcher,
                node.taxii,
                &format!("{listing}?match[version]={version}"),
            )
            .await;
            assert_eq!(reply.status, 400, "{listing} {version}: {}", reply.text());
            let said = reply.json()["description"].as_str().unwrap().to_owned();
            assert!(said.contains("match[id]"), "{said}");
        }
        for query in ["", "?match[version]=last"] {
            let reply = get(&researcher, node.taxii, &format!("{listing}{query}")).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            let mut listed = versions_listed(&reply.json());
            listed.sort();
            assert_eq!(listed, pairs(&[(1, 3), (2, 3)]), "{listing}{query}");
        }
    }
}

/// The (version, message) of each success and failure of a status resource.
fn outcomes(status: &Value, which: &str) -> Vec<(String, String)> {
    status[which]
        .as_array()
        .unwrap_or_else(|| panic!("no {which}: {status}"))
        .iter()
        .map(|d| {
            (
                d["version"].as_str().unwrap_or_default().to_owned(),
                d["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The node keeps versions to the millisecond. A newer version whose `modified` falls
/// in the same millisecond as the held one (`…00.123999Z` after `…00.123456Z`) was
/// reported as a success and dropped, and `match[version]=…00.123999Z` then answered the
/// other version; an envelope carrying an object's history newest first had its older
/// versions reported as successes though none was stored. Each is now a failure with
/// its reason, a success names the version as stored, a version sent again is still a
/// success, and a timestamp finer than a millisecond names no version held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_the_node_does_not_store_is_reported_as_a_failure() {
    let (pki, node, collection) = start().await;
    let analyst = tls(&pki, "analyst.soc");
    let objects = format!("{collection}objects/");
    let post = |sent: Vec<Value>| post_objects(&analyst, &node, &objects, sent);

    let id = id_of(40);
    let mut first = indicator(&id, "micro.example", GREEN);
    first["created"] = json!("2026-11-01T00:00:00.123456Z");
    first["modified"] = json!("2026-11-01T00:00:00.123456Z");
    first["name"] = json!("first version");
    let mut corrected = first.clone();
    corrected["modified"] = json!("2026-11-01T00:00:00.123999Z");
    corrected["name"] = json!("corrected version");
    corrected["indicator_types"] = json!(["benign"]);
    let stored = "2026-11-01T00:00:00.123Z";

    let status = post(vec![first.clone()]).await;
    assert_eq!(
        outcomes(&status, "successes"),
        vec![(stored.to_owned(), String::new())],
        "{status}"
    );
    let status = post(vec![corrected]).await;
    assert_eq!(status["success_count"], json!(0), "{status}");
    let failures = outcomes(&status, "failures");
    assert_eq!(failures.len(), 1, "{status}");
    assert_eq!(failures[0].0, "2026-11-01T00:00:00.123999Z");
    assert!(
        failures[0].1.contains("millisecond") && failures[0].1.contains(stored),
        "{}",
        failures[0].1
    );
    // The same version sent again is held: a success.
    let status = post(vec![first]).await;
    assert_eq!(status["success_count"], json!(1), "{status}");

    // The version filter answers only the version asked for.
    let exact = |version: &str| format!("{objects}{id}/?match[version]={version}");
    for finer in ["2026-11-01T00:00:00.123999Z", "2026-11-01T00:00:00.123456Z"] {
        let reply = get(&analyst, node.taxii, &exact(finer)).await;
        assert_eq!(reply.status, 404, "{finer}: {}", reply.text());
        let listed = get(
            &analyst,
            node.taxii,
            &format!("{objects}?match[id]={id}&match[version]={finer}"),
        )
        .await;
        assert_eq!(listed.json()["objects"], json!([]), "{finer}");
    }
    for same in [stored, "2026-11-01T00:00:00.123000Z"] {
        let reply = get(&analyst, node.taxii, &exact(same)).await;
        assert_eq!(reply.status, 200, "{same}: {}", reply.text());
        let served = reply.json()["objects"].clone();
        assert_eq!(served[0]["name"], json!("first version"), "{served}");
        assert_eq!(served[0]["modified"], json!(stored), "{served}");
    }

    // An object's history, newest first, in one envelope: only the newest is stored.
    let history = id_of(41);
    let at = |d: u32| {
        let mut object = indicator(&history, "history.example", GREEN);
        object["modified"] = json!(day(d));
        object
    };
    let status = post(vec![at(3), at(1), at(2)]).await;
    assert_eq!(
        outcomes(&status, "successes"),
        vec![(day(3), String::new())],
        "{status}"
    );
    let failures = outcomes(&status, "failures");
    assert_eq!(
        failures.iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
        vec![day(1), day(2)],
        "{status}"
    );
    for (_, message) in &failures {
        assert!(
            message.contains("later version") && message.contains(&day(3)),
            "{message}"
        );
    }
    let held = get(
        &analyst,
        node.taxii,
        &format!("{objects}{history}/versions/"),
    )
    .await;
    assert_eq!(held.json()["versions"], json!([day(3)]));

    // A version held among the older ones, sent again, is a success.
    let again = id_of(42);
    let at = |d: u32| {
        let mut object = indicator(&again, "again.example", GREEN);
        object["modified"] = json!(day(d));
        object
    };
    post(vec![at(1)]).await;
    post(vec![at(2)]).await;
    let status = post(vec![at(1), at(2)]).await;
    assert_eq!(status["success_count"], json!(2), "{status}");
    // So are a context object and a revocation sent again.
    let malware = json!({
        "type": "malware",
        "spec_version": "2.1",
        "id": "malware--33333333-3333-4333-8333-333333333333",
        "created": "2025-01-01T00:00:00.000Z",
        "modified": "2025-01-01T00:00:00.000Z",
        "name": "Bad Rat",
        "is_family": true,
        "object_marking_refs": [GREEN],
    });
    let mut revocation = at(3);
    revocation["revoked"] = json!(true);
    for _ in 0..2 {
        let status = post(vec![malware.clone(), revocation.clone()]).await;
        assert_eq!(status["success_count"], json!(2), "{status}");
    }
}

/// RFC 9110 §9.3.2: HEAD is answered as GET without the body. Every TAXII resource
/// answered it 405. It now goes through the same authorisation and policy gate as GET:
/// the same status and headers (the length of the body GET would send, the date
/// headers), no body, and a withheld object answered exactly as an absent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_as_get_without_the_body() {
    let (pki, node, collection) = start().await;
    let analyst = tls(&pki, "analyst.soc");
    let researcher = tls(&pki, "researcher.uni-x");
    let objects = format!("{collection}objects/");
    let status = post_objects(
        &analyst,
        &node,
        &objects,
        vec![version(50, GREEN, 2), version(51, AMBER, 2)],
    )
    .await;
    assert_eq!(status["failure_count"], json!(0), "{status}");
    let (visible, withheld) = (id_of(50), id_of(51));
    let absent = "indicator--0f0f0f0f-0000-4000-8000-0f0f0f0f0f0f";
    let head = |path: String| {
        let researcher = researcher.clone();
        let addr = node.taxii;
        async move { common::https::send(&researcher, addr, "HEAD", &path, b"").await }
    };
    let kept = [
        "content-type",
        "content-length",
        "x-taxii-date-added-first",
        "x-taxii-date-added-last",
    ];
    let headers = |reply: &Reply| -> Vec<(String, Option<String>)> {
        kept.iter()
            .map(|name| (name.to_string(), reply.header(name).map(str::to_owned)))
            .collect()
    };
    for path in [
        "/taxii2/".to_owned(),
        "/api/".to_owned(),
        collection.clone(),
        objects.clone(),
        format!("{collection}manifest/"),
        format!("{objects}?match[id]={visible}&match[version]=all"),
        format!("{objects}{visible}/"),
        format!("{objects}{visible}/versions/"),
    ] {
        let got = get(&researcher, node.taxii, &path).await;
        let headed = head(path.clone()).await;
        assert_eq!(got.status, 200, "GET {path}: {}", got.text());
        assert_eq!(headed.status, 200, "HEAD {path}: {}", headed.text());
        assert!(headed.body.is_empty(), "HEAD {path}: a body");
        assert_eq!(headers(&headed), headers(&got), "HEAD {path}");
        assert_eq!(
            headed.header("content-length"),
            Some(got.body.len().to_string().as_str()),
            "HEAD {path}"
        );
    }
    for resource in ["", "versions/"] {
        let withheld = head(format!("{objects}{withheld}/{resource}")).await;
        let missing = head(format!("{objects}{absent}/{resource}")).await;
        assert_eq!(withheld.status, 404);
        assert_eq!(
            (withheld.status, headers(&withheld)),
            (missing.status, headers(&missing)),
            "{resource}"
        );
    }
    // Allowed methods are named with HEAD.
    let refused = common::https::send(&researcher, node.taxii, "PUT", &objects, b"").await;
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), Some("GET, HEAD, POST"));
}

/// A POSTed object of a type the node does not store fails with a text naming the types
/// it does store; the text left out identity, vulnerability, course-of-action and
/// sighting, which the node stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_of_a_type_not_stored_fails_naming_every_type_stored() {
    let (pki, node, collection) = start().await;
    let analyst = tls(&pki, "analyst.soc");
    let objects = format!("{collection}objects/");
    let location = json!({
        "type": "location",
        "spec_version": "2.1",
        "id": "location--a0a0a0a0-0000-4000-8000-000000000001",
        "created": "2025-01-01T00:00:00.000Z",
        "modified": "2025-01-01T00:00:00.000Z",
        "region": "europe",
        "object_marking_refs": [GREEN],
    });
    let status = post_objects(&analyst, &node, &objects, vec![location]).await;
    let failures = outcomes(&status, "failures");
    assert_eq!(failures.len(), 1, "{status}");
    let message = &failures[0].1;
    for stored in [
        "indicator",
        "malware",
        "threat-actor",
        "intrusion-set",
        "campaign",
        "attack-pattern",
        "tool",
        "report",
        "relationship",
        "identity",
        "vulnerability",
        "course-of-action",
        "sighting",
    ] {
        assert!(message.contains(stored), "{stored}: {message}");
    }
}
