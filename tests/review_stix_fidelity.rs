//! STIX fidelity, second pass, against a real `entente serve` process: a URL with
//! credentials is refused inside a compound pattern as it is alone, `created` is
//! exported to the millisecond and kept across the versions the node makes, and
//! `entente revoke` revokes a context object.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use entente::interop::{Defaults, InputFormat, parse_feed_page, parse_input};
use entente::rpc::proto::PublishRequest;
use entente::wire;
use serde_json::{Value, json};

use common::https::{get, objects_path, post_objects, tls};
use common::{Pki, TaxiiNode, node_section, serve_taxii, taxii_node_client};

const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
const AMBER: &str = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421";

/// Upper bound for anything the tests wait for.
const DEADLINE: Duration = Duration::from_secs(60);

/// A node (redmond.hq) with an analyst and a TAXII listener: the node, its PKI, the
/// analyst's TLS client and the collection's objects path.
async fn start() -> (Pki, TaxiiNode, Arc<rustls::ClientConfig>, String) {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.client("analyst.soc");
    let mut text = node_section(&pki, &hq, &pki.path().join("data"));
    text.push_str(
        "\n[[client]]\nid = \"analyst.soc\"\nrole = \"analyst\"\n\
         \n[taxii]\nlisten = \"127.0.0.1:0\"\n",
    );
    let config = pki.path().join("redmond.hq.toml");
    std::fs::write(&config, text).unwrap();
    let node = serve_taxii(&config);
    let analyst = tls(&pki, "analyst.soc");
    let objects = objects_path(&analyst, &node).await;
    (pki, node, analyst, objects)
}

/// Every version of `id` the analyst can read, oldest first.
async fn versions(
    analyst: &Arc<rustls::ClientConfig>,
    node: &TaxiiNode,
    objects: &str,
    id: &str,
) -> Vec<Value> {
    let reply = get(
        analyst,
        node.taxii,
        &format!("{objects}{id}/?match[version]=all"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mut all = reply.json()["objects"].as_array().unwrap().clone();
    all.sort_by_key(|o| o["modified"].as_str().unwrap().to_owned());
    all
}

/// Publishes `items` as one bundle through `Intel.Publish`.
async fn publish(
    client: &entente::client::NodeClient,
    items: Vec<wire::Item>,
) -> Result<entente::rpc::proto::PublishResponse, String> {
    let request = PublishRequest {
        items,
        distribution: Some(wire::Distribution::default()),
        groups: Vec::new(),
    };
    client
        .publish(tokio_stream::iter(std::iter::once(request)))
        .await
        .map_err(|e| e.to_string())
}

/// A draft indicator as `entente publish` sends a list line: no id, no version, no
/// STIX properties.
fn draft(ty: &str, value: &str) -> wire::Item {
    wire::Item {
        id: String::new(),
        modified_unix_ms: 0,
        tlp: wire::Tlp::Green as i32,
        tags: vec!["blocklist".into()],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: ty.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        })),
    }
}

/// The revocation `entente revoke ID --reason REASON` sends.
fn bare_revocation(id: &str, reason: &str) -> wire::Item {
    wire::Item {
        id: id.to_owned(),
        modified_unix_ms: 0,
        tlp: wire::Tlp::Unspecified as i32,
        tags: Vec::new(),
        kind: Some(wire::item::Kind::Revocation(wire::Revocation {
            reason: reason.to_owned(),
            indicator_type: String::new(),
            indicator: None,
        })),
    }
}

fn now_ms() -> i64 {
    entente::util::now_ms()
}

/// Waits until the clock has passed `ms`, so that the next version the node makes is
/// later than one made at `ms`.
async fn clock_past(ms: i64) {
    let until = Instant::now() + DEADLINE;
    while now_ms() <= ms {
        assert!(Instant::now() < until, "the clock did not move");
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------
// A URL with credentials inside a compound pattern.

const CREDENTIAL: &str = "https://victim:S3cretPassw0rd@portal.example.com/login";
/// How every refusal shows the URL (a URL given with a scheme shows it before).
const MASKED: &str = "***@portal.example.com/login";

/// A URL with user information was refused as a `url` indicator, but the same URL
/// compared inside a compound pattern (`[url:value = '…'] OR [ipv4-addr:value = '…']`)
/// only made the pattern opaque, and it was signed and shared with its credential. Such
/// a pattern is now refused on every input path, whatever the operator and the path
/// that compares the URL, with the URL shown as the single comparison shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_with_credentials_is_refused_inside_a_compound_pattern() {
    let refused = [
        format!("[url:value = '{CREDENTIAL}'] OR [ipv4-addr:value = '198.51.100.9']"),
        format!("[url:value = '{CREDENTIAL}' OR domain-name:value = 'portal.example.com']"),
        format!("[url:value LIKE '{CREDENTIAL}%']"),
        format!("[url:value != '{CREDENTIAL}' AND ipv4-addr:value = '198.51.100.9']"),
        format!("[process:command_line = 'curl -O {CREDENTIAL}']"),
        format!("[network-traffic:extensions.'http-request-ext'.request_value = '{CREDENTIAL}']"),
        // Without a scheme, on a `url` path.
        "[url:value = 'victim:S3cretPassw0rd@portal.example.com/login'] OR [ipv4-addr:value = '198.51.100.9']".to_owned(),
        // A pattern that does not scan (an escape STIX does not define) is searched
        // as text.
        format!("[url:value = '{CREDENTIAL}\\q'] OR [ipv4-addr:value = '198.51.100.9']"),
    ];
    let accepted = [
        "[url:value LIKE 'https://%@portal.example.com/%'] OR [ipv4-addr:value = '198.51.100.9']",
        "[url:value MATCHES '^https://[^/]+@portal\\\\.example\\\\.com/'] OR [ipv4-addr:value = '198.51.100.9']",
        "[url:value = 'https://portal.example.com/p?next=a@b.example'] OR [ipv4-addr:value = '198.51.100.9']",
        "[email-addr:value = 'victim@portal.example.com'] OR [ipv4-addr:value = '198.51.100.9']",
    ];
    let object = |n: usize, pattern: &str| {
        json!({
            "type": "indicator", "spec_version": "2.1",
            "id": format!("indicator--c2ed0000-0000-4000-8000-{n:012}"),
            "created": "2026-11-02T10:00:00.000Z", "modified": "2026-11-02T10:00:00.000Z",
            "pattern": pattern, "pattern_type": "stix",
            "valid_from": "2026-11-02T10:00:00Z", "object_marking_refs": [GREEN],
        })
    };
    let bundle = |objects: Vec<Value>| {
        json!({
            "type": "bundle", "id": "bundle--44af6c39-c09b-49c5-9de2-394224b04982",
            "objects": objects,
        })
        .to_string()
    };
    let check_refusal = |what: &str, pattern: &str, reason: &str| {
        assert!(reason.contains(MASKED), "{what}: {pattern}: {reason}");
        assert!(reason.contains("user information"), "{what}: {reason}");
        assert!(!reason.contains("S3cret"), "{what}: {reason}");
    };
    let defaults = Defaults::default();

    // A STIX file (`entente publish`) and a page of a TAXII feed.
    for (n, pattern) in refused.iter().enumerate() {
        let text = bundle(vec![object(n, pattern)]);
        let parsed = parse_input(InputFormat::Stix, &text, &defaults, now_ms());
        assert!(parsed.items.is_empty(), "file: {pattern}");
        assert_eq!(parsed.errors.len(), 1, "file: {pattern}");
        check_refusal("file", pattern, &parsed.errors[0].to_string());
        let page = parse_feed_page(&text, &defaults, now_ms()).unwrap();
        assert!(page.items.is_empty(), "feed: {pattern}");
        check_refusal("feed", pattern, &page.errors[0].to_string());
    }
    for (n, pattern) in accepted.iter().enumerate() {
        let text = bundle(vec![object(100 + n, pattern)]);
        let parsed = parse_input(InputFormat::Stix, &text, &defaults, now_ms());
        assert_eq!(parsed.errors, [], "{pattern}");
        assert_eq!(parsed.items.len(), 1, "{pattern}");
    }

    // A TAXII POST: the object fails alone, the other is taken.
    let (pki, node, analyst, objects) = start().await;
    let status = post_objects(
        &analyst,
        &node,
        &objects,
        vec![object(200, &refused[0]), object(201, accepted[0])],
    )
    .await;
    assert_eq!(status["success_count"], json!(1), "{status}");
    assert_eq!(status["failure_count"], json!(1), "{status}");
    let failure = status["failures"][0]["message"].as_str().unwrap();
    check_refusal("TAXII POST", &refused[0], failure);
    assert!(failure.contains(&format!("https://{MASKED}")), "{failure}");

    // An `Intel.Publish` draft.
    let client = taxii_node_client(&pki, &node, "analyst.soc").await;
    let refusal = publish(&client, vec![draft("stix-pattern", &refused[0])])
        .await
        .unwrap_err();
    check_refusal("Intel.Publish", &refused[0], &refusal);

    // Nothing with the credential is held.
    let listed = get(&analyst, node.taxii, &format!("{objects}?limit=1000"))
        .await
        .text();
    assert!(!listed.contains("S3cret"), "{listed}");
}

// ---------------------------------------------------------------------------------
// `created`.

/// `created` given to the second (or to the tenth of a second) was exported as written,
/// while `modified` was written to the millisecond: the export failed strict validation
/// (`created` must be precise to the millisecond). It is now written to the
/// millisecond too, for indicators and context objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_is_exported_to_the_millisecond() {
    const INDICATOR: &str = "indicator--c4ea0000-0000-4000-8000-000000000001";
    const MALWARE: &str = "malware--c4ea0000-0000-4000-8000-000000000002";
    const OFFSET: &str = "tool--c4ea0000-0000-4000-8000-000000000003";
    let (_pki, node, analyst, objects) = start().await;
    let status = post_objects(
        &analyst,
        &node,
        &objects,
        vec![
            json!({
                "type": "indicator", "spec_version": "2.1", "id": INDICATOR,
                "created": "2026-11-02T10:00:00Z", "modified": "2026-11-02T10:00:00.000Z",
                "pattern": "[domain-name:value = 'seconds.example']", "pattern_type": "stix",
                "valid_from": "2026-11-02T10:00:00Z", "object_marking_refs": [GREEN],
            }),
            json!({
                "type": "malware", "spec_version": "2.1", "id": MALWARE,
                "created": "2026-11-02T10:00:00.1Z", "modified": "2026-11-02T10:00:00.5Z",
                "name": "Tenths", "is_family": true, "object_marking_refs": [GREEN],
            }),
            json!({
                "type": "tool", "spec_version": "2.1", "id": OFFSET,
                "created": "2026-11-02T12:00:00.123456+02:00", "modified": "2026-11-02T10:00:01Z",
                "name": "Offset", "object_marking_refs": [GREEN],
            }),
        ],
    )
    .await;
    assert_eq!(status["success_count"], json!(3), "{status}");
    for (id, created, modified) in [
        (
            INDICATOR,
            "2026-11-02T10:00:00.000Z",
            "2026-11-02T10:00:00.000Z",
        ),
        (
            MALWARE,
            "2026-11-02T10:00:00.100Z",
            "2026-11-02T10:00:00.500Z",
        ),
        (
            OFFSET,
            "2026-11-02T10:00:00.123Z",
            "2026-11-02T10:00:01.000Z",
        ),
    ] {
        let object = get(&analyst, node.taxii, &format!("{objects}{id}/"))
            .await
            .json();
        let object = &object["objects"][0];
        assert_eq!(object["created"], json!(created), "{object}");
        assert_eq!(object["modified"], json!(modified), "{object}");
    }
}

/// Every version the node made of one indicator got a new `created` (a list line
/// published again, `entente revoke`), though STIX says `created` does not change
/// between versions. A new version the node builds of an id it holds now keeps the
/// `created` the held version has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_the_node_makes_keep_the_created_of_the_first() {
    let (pki, node, analyst, objects) = start().await;
    let client = taxii_node_client(&pki, &node, "analyst.soc").await;
    let id = entente::model::ItemId::derived(
        "redmond.hq",
        entente::model::IndicatorType::Domain,
        "republished.example",
    )
    .to_string();
    // The same list line published twice, then revoked as `entente revoke` does.
    let mut last = 0;
    for items in [
        vec![draft("domain", "republished.example")],
        vec![draft("domain", "Republished.Example.")],
        vec![bare_revocation(&id, "no longer used by the actor")],
    ] {
        clock_past(last).await;
        let answer = publish(&client, items).await.unwrap();
        assert_eq!(answer.items_accepted, 1, "{answer:?}");
        last = now_ms();
    }
    let all = versions(&analyst, &node, &objects, &id).await;
    assert_eq!(all.len(), 3, "{all:?}");
    let first = all[0]["modified"].clone();
    for version in &all {
        assert_eq!(version["created"], first, "{version}");
    }
    assert_eq!(all[2]["revoked"], json!(true), "{}", all[2]);
    assert_ne!(all[1]["modified"], first);
}

// ---------------------------------------------------------------------------------
// `entente revoke` of a context object.

/// `entente revoke` of a malware (or any context object) failed with an internal
/// message (`unknown indicator type ""`). It now publishes a new version of the object
/// with `revoked: true` and the reason, keeping its marking, labels and properties, as
/// a TAXII POST with `revoked: true` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entente_revoke_revokes_a_context_object() {
    const MALWARE: &str = "malware--c8ea0000-0000-4000-8000-000000000001";
    let (pki, node, analyst, objects) = start().await;
    let status = post_objects(
        &analyst,
        &node,
        &objects,
        vec![json!({
            "type": "malware", "spec_version": "2.1", "id": MALWARE,
            "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z",
            "name": "Misattributed", "is_family": true, "labels": ["apt-x"],
            "object_marking_refs": [AMBER], "x_vendor": {"score": 7},
        })],
    )
    .await;
    assert_eq!(status["success_count"], json!(1), "{status}");
    let client = taxii_node_client(&pki, &node, "analyst.soc").await;
    let answer = publish(&client, vec![bare_revocation(MALWARE, "misattributed")])
        .await
        .unwrap();
    assert_eq!(answer.items_accepted, 1, "{answer:?}");

    let all = versions(&analyst, &node, &objects, MALWARE).await;
    assert_eq!(all.len(), 2, "{all:?}");
    let revoked = &all[1];
    assert_eq!(revoked["type"], json!("malware"), "{revoked}");
    assert_eq!(revoked["revoked"], json!(true), "{revoked}");
    assert_eq!(
        revoked["x_entente_revocation_reason"],
        json!("misattributed"),
        "{revoked}"
    );
    assert_eq!(revoked["object_marking_refs"], json!([AMBER]), "{revoked}");
    assert_eq!(revoked["labels"], json!(["apt-x"]), "{revoked}");
    assert_eq!(revoked["name"], json!("Misattributed"), "{revoked}");
    assert_eq!(revoked["is_family"], json!(true), "{revoked}");
    assert_eq!(revoked["x_vendor"], json!({"score": 7}), "{revoked}");
    assert_eq!(
        revoked["created"],
        json!("2026-11-01T00:00:00.000Z"),
        "{revoked}"
    );
    // The property is declared, and the listing serves its definition.
    assert!(
        revoked["extensions"]
            .as_object()
            .is_some_and(|e| e.keys().any(|k| k.starts_with("extension-definition--"))),
        "{revoked}"
    );
    let listed = get(&analyst, node.taxii, &format!("{objects}?limit=1000"))
        .await
        .json();
    assert!(
        listed["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["type"] == "extension-definition"),
        "{listed}"
    );

    // Nothing to revoke is still said in plain words.
    let refusal = publish(
        &client,
        vec![bare_revocation(
            "malware--c8ea0000-0000-4000-8000-0000000000ff",
            "x",
        )],
    )
    .await
    .unwrap_err();
    assert!(refusal.contains("nothing to revoke"), "{refusal}");
}

// ---------------------------------------------------------------------------------
// Objects STIX 2.1 says are invalid.

/// Objects missing what STIX 2.1 requires (a malware's `is_family`, a threat actor's
/// `name`) or with common properties of the wrong type (`indicator_types` as a
/// string, `lang` as a number, `external_references` as an object) were signed,
/// replicated and served, and one of them made `stix2`'s collection reader refuse the
/// whole page. Each is now refused alone, with its position and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_stix_says_are_invalid_are_refused_each_with_the_reason() {
    let (_pki, node, analyst, objects) = start().await;
    let base = |ty: &str, n: u32, extra: Value| {
        let mut object = json!({
            "type": ty, "spec_version": "2.1",
            "id": format!("{ty}--f4f40000-0000-4000-8000-{n:012}"),
            "created": "2026-11-02T10:00:00.000Z", "modified": "2026-11-02T10:00:00.000Z",
            "object_marking_refs": [GREEN],
        });
        for (key, value) in extra.as_object().unwrap() {
            object[key] = value.clone();
        }
        object
    };
    let indicator = |n: u32, extra: Value| {
        let mut extra = extra;
        extra["pattern"] = json!(format!("[domain-name:value = 'f4-{n}.example']"));
        extra["pattern_type"] = json!("stix");
        extra["valid_from"] = json!("2026-11-02T10:00:00Z");
        base("indicator", n, extra)
    };
    let invalid = [
        (base("malware", 1, json!({"name": "NoFamily"})), "is_family"),
        (
            base(
                "threat-actor",
                2,
                json!({"threat_actor_types": ["crime-syndicate"]}),
            ),
            "name",
        ),
        (
            indicator(3, json!({"indicator_types": "malicious-activity"})),
            "indicator_types",
        ),
        (indicator(4, json!({"name": 7})), "name"),
        (indicator(5, json!({"lang": 5})), "lang"),
        (
            indicator(6, json!({"external_references": {"source_name": "x"}})),
            "external_references",
        ),
        (
            indicator(7, json!({"external_references": []})),
            "external_references",
        ),
        (
            base(
                "threat-actor",
                8,
                json!({"name": "Late", "first_seen": "not a date"}),
            ),
            "first_seen",
        ),
        (
            base(
                "report",
                9,
                json!({"name": "R", "object_refs": ["malware--f4f40000-0000-4000-8000-000000000010"]}),
            ),
            "published",
        ),
    ];
    let valid = [
        indicator(
            20,
            json!({
                "name": "Fine", "lang": "en", "indicator_types": ["malicious-activity"],
                "external_references": [{"source_name": "capec", "external_id": "CAPEC-163"}],
            }),
        ),
        base(
            "malware",
            21,
            json!({"name": "Family", "is_family": true, "malware_types": ["trojan"]}),
        ),
        base("malware", 22, json!({"is_family": false})),
        base(
            "threat-actor",
            23,
            json!({"name": "Actor", "first_seen": "2026-01-01T00:00:00Z"}),
        ),
    ];
    let mut posted: Vec<Value> = invalid.iter().map(|(o, _)| o.clone()).collect();
    posted.extend(valid.iter().cloned());
    let status = post_objects(&analyst, &node, &objects, posted).await;
    assert_eq!(status["success_count"], json!(valid.len()), "{status}");
    assert_eq!(status["failure_count"], json!(invalid.len()), "{status}");
    let failures = status["failures"].as_array().unwrap();
    for (object, word) in &invalid {
        let failure = failures
            .iter()
            .find(|f| f["id"] == object["id"])
            .unwrap_or_else(|| panic!("{object} was not refused: {status}"));
        let message = failure["message"].as_str().unwrap();
        assert!(message.contains(word), "{object}: {message}");
    }
}

// ---------------------------------------------------------------------------------
// Patterns outside the patterning language.

/// A pattern that is not STIX patterning (`[…] OR` with nothing after, an unquoted
/// value, `WITHIN 5` without `SECONDS`, a hash of the wrong length) was accepted and
/// exported as written: every export holding it failed the OASIS validator, and a
/// `TAXIICollectionSource` reading the collection failed on it. It is now refused, with
/// the place and the reason, on every path: a file, a feed page, a TAXII POST (that
/// object alone) and `Intel.Publish`. A valid compound pattern is still taken and its
/// export passes the validator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_outside_the_patterning_language_is_refused_on_every_path() {
    let refused = [
        "[ipv4-addr:value = '198.51.100.7'] OR",
        "[ipv4-addr:value = 198.51.100.7]",
        "[ipv4-addr:value = '198.51.100.7'] AND [domain-name:value = 'c2.example'] WITHIN 5",
        "[file:hashes.MD5 = 'abc'] OR [ipv4-addr:value = '198.51.100.7']",
        "[ipv4-addr:value = '198.51.100.7' or domain-name:value = 'c2.example']",
    ];
    let valid = "[ipv4-addr:value = '198.51.100.7'] AND [domain-name:value = 'c2.example'] WITHIN 300 SECONDS";
    let object = |n: usize, pattern: &str| {
        json!({
            "type": "indicator", "spec_version": "2.1",
            "id": format!("indicator--fa77e000-0000-4000-8000-{n:012}"),
            "created": "2026-11-02T10:00:00.000Z", "modified": "2026-11-02T10:00:00.000Z",
            "pattern": pattern, "pattern_type": "stix",
            "valid_from": "2026-11-02T10:00:00Z", "object_marking_refs": [GREEN],
        })
    };
    let bundle = |objects: Vec<Value>| {
        json!({
            "type": "bundle", "id": "bundle--44af6c39-c09b-49c5-9de2-394224b04982",
            "objects": objects,
        })
        .to_string()
    };
    let defaults = Defaults::default();
    for (n, pattern) in refused.iter().enumerate() {
        let text = bundle(vec![object(n, pattern)]);
        let parsed = parse_input(InputFormat::Stix, &text, &defaults, now_ms());
        assert!(parsed.items.is_empty(), "file: {pattern}");
        let reason = parsed.errors[0].to_string();
        assert!(
            reason.contains("not valid STIX patterning"),
            "file: {reason}"
        );
        assert!(reason.contains("at character"), "file: {reason}");
        let page = parse_feed_page(&text, &defaults, now_ms()).unwrap();
        assert!(page.items.is_empty(), "feed: {pattern}");
        assert!(
            page.errors[0]
                .to_string()
                .contains("not valid STIX patterning")
        );
    }

    // A TAXII POST: each refused object fails alone, the valid one is taken.
    let (pki, node, analyst, objects) = start().await;
    let mut posted: Vec<Value> = refused
        .iter()
        .enumerate()
        .map(|(n, p)| object(100 + n, p))
        .collect();
    posted.push(object(200, valid));
    let status = post_objects(&analyst, &node, &objects, posted).await;
    assert_eq!(status["success_count"], json!(1), "{status}");
    assert_eq!(status["failure_count"], json!(refused.len()), "{status}");
    for failure in status["failures"].as_array().unwrap() {
        let message = failure["message"].as_str().unwrap();
        assert!(message.contains("not valid STIX patterning"), "{message}");
    }

    // `Intel.Publish`, which no import reads first.
    let client = taxii_node_client(&pki, &node, "analyst.soc").await;
    for pattern in refused {
        let refusal = publish(&client, vec![draft("stix-pattern", pattern)])
            .await
            .unwrap_err();
        assert!(
            refusal.contains("not valid STIX patterning"),
            "{pattern}: {refusal}"
        );
    }

    // What the collection holds is valid STIX: its one indicator, as exported.
    let listed = get(&analyst, node.taxii, &format!("{objects}?limit=1000"))
        .await
        .json();
    let indicators: Vec<&Value> = listed["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["type"] == "indicator")
        .collect();
    assert_eq!(indicators.len(), 1, "{listed}");
    assert_eq!(indicators[0]["pattern"], json!(valid));
    let file = pki.path().join("listed.json");
    let exported = json!({
        "type": "bundle", "id": "bundle--44af6c39-c09b-49c5-9de2-394224b04983",
        "objects": listed["objects"],
    });
    std::fs::write(&file, exported.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/validate_stix.py");
    let out = std::process::Command::new(
        std::env::var("ENTENTE_PYTHON").unwrap_or_else(|_| "python3".into()),
    )
    .arg(script)
    .arg(&file)
    .output()
    .expect("run python3 (install the packages in tests/python/requirements.txt)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TAXII client that read an indicator the node published from a list line, and
/// posted it back unchanged, was told "not stored: another version in the same
/// millisecond": the export adds properties (`created`, `created_by_ref`, the pattern)
/// that the list item did not carry. The object served and sent back unchanged is now
/// the version held, a success; changed at the same version (a marking, a name), it is
/// still a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_object_posted_back_unchanged_is_the_version_held() {
    let (pki, node, analyst, objects) = start().await;
    let client = taxii_node_client(&pki, &node, "analyst.soc").await;
    publish(&client, vec![draft("ipv4", "198.51.100.77")])
        .await
        .unwrap();
    let listed = get(&analyst, node.taxii, &format!("{objects}?limit=1000"))
        .await
        .json();
    let served = listed["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "indicator")
        .cloned()
        .expect("the indicator is served");

    let status = post_objects(&analyst, &node, &objects, vec![served.clone()]).await;
    assert_eq!(status["success_count"], json!(1), "{status}");
    assert_eq!(status["failure_count"], json!(0), "{status}");

    let mut renamed = served.clone();
    renamed["name"] = json!("another name");
    let mut amber = served.clone();
    amber["object_marking_refs"] = json!([AMBER]);
    for changed in [renamed, amber] {
        let status = post_objects(&analyst, &node, &objects, vec![changed.clone()]).await;
        assert_eq!(status["success_count"], json!(0), "{changed}: {status}");
        assert_eq!(status["failure_count"], json!(1), "{changed}: {status}");
    }

    // Revoked, served and posted back unchanged: the same (the revocation extension it
    // declares is no reference to a shared object).
    let id = served["id"].as_str().unwrap();
    publish(&client, vec![bare_revocation(id, "sinkholed")])
        .await
        .unwrap();
    let listed = get(&analyst, node.taxii, &format!("{objects}?limit=1000"))
        .await
        .json();
    let revoked = listed["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == served["id"])
        .cloned()
        .expect("the revocation is served");
    assert_eq!(revoked["revoked"], json!(true), "{revoked}");
    let status = post_objects(&analyst, &node, &objects, vec![revoked]).await;
    assert_eq!(status["success_count"], json!(1), "{status}");
    assert_eq!(status["failure_count"], json!(0), "{status}");
}
