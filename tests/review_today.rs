//! Attacks on the delivery rule's reading of UUIDs written in an object and on the
//! refusal of identities that pass for a node's own:
//!
//! - a UUID written in a URL with its hyphens percent-encoded (`%2D`, as many tools
//!   write a path segment) was not found, so an object naming a withheld one that way
//!   left with the UUID;
//! - an identity named as a node with an invisible character (a zero-width space, a
//!   soft hyphen, a byte-order mark) inside or around the name was not taken for that
//!   node's; nor was one named in look-alike letters of another script (a Cyrillic `о`
//!   for a Latin `o`, full-width letters, a digit one for a small L);
//! - a new version written through TAXII of an item this node published for named
//!   recipients, once a compaction had dropped it as expired, was signed for every
//!   partner.

mod common;

use entente::NodeId;
use entente::crypto::{BundleSigner, verify};
use entente::engine::now_ms;
use entente::model::{
    ContextObject, Distribution, Holder, IndicatorType, Item, ItemId, ItemKind, StixProperties, Tlp,
};
use entente::store::compact::Compaction;
use entente::store::prelude::*;
use serde_json::{Value, json};

use common::https::{get, indicator, objects_path, post_objects, tls};
use common::signed::{Fixture, fixture, local};
use common::{Pki, node_section, serve_taxii};

const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";

fn context(id: &str, properties: Value) -> Item {
    let object = properties.as_object().cloned().unwrap_or_default();
    Item {
        id: ItemId::parse(id).unwrap(),
        modified_ms: 1,
        tlp: Tlp::Green,
        tags: vec![],
        kind: ItemKind::Context(ContextObject {
            object_type: IndicatorType::context_type(id.split_once("--").unwrap().0).unwrap(),
            refs: vec![],
            properties: StixProperties::keep_for(Holder::Context, &object).unwrap(),
        }),
    }
}

// ---------------------------------------------------------------------------------
// A UUID written in a URL with its hyphens percent-encoded.

/// Rule 7 judges an object by each UUID it writes, in a URL too; a URL that writes the
/// UUID of a withheld report as `a1a1a1a1%2D0000%2D...` resolves to the same path at
/// any server that decodes it, but the reader looked only for plain hyphens, so the
/// object was delivered with the UUID in it. A percent-encoded hyphen is read as one.
#[test]
fn a_uuid_with_percent_encoded_hyphens_is_referenced() {
    let item = context(
        "malware--a1a1a1a1-0000-4000-8000-000000000009",
        json!({
            "name": "x",
            "external_references": [{
                "source_name": "x",
                "url": "https://x.example/o/A1A1A1A1%2D0000%2D4000%2d8000%2D000000000002",
            }],
            "x_own": "a1a1a1a1%2D0000%2D4000%2D8000%2D000000000009",
        }),
    );
    let referenced: Vec<String> = item.referenced().iter().map(|r| r.to_string()).collect();
    assert_eq!(
        referenced,
        ["indicator--a1a1a1a1-0000-4000-8000-000000000002"],
        "{referenced:?}"
    );
}

// ---------------------------------------------------------------------------------
// An identity named as a node with an invisible character.

/// The configuration of redmond.hq in `pki`: berlin.office as a peer, an analyst that
/// sees everything, and a TAXII listener.
fn write_config(pki: &Pki) -> std::path::PathBuf {
    pki.client("analyst.soc");
    let hq = NodeId::new("redmond.hq").unwrap();
    let mut text = node_section(pki, &hq, &pki.path().join("data-hq"));
    text.push_str(
        "\n[[peer]]\nid = \"berlin.office\"\naddress = \"127.0.0.1:1\"\nrole = \"peer\"\nmax_tlp = \"AMBER\"\nallow_types = [\"*\"]\n\
         \n[[client]]\nid = \"analyst.soc\"\nrole = \"analyst\"\n\
         \n[taxii]\nlisten = \"127.0.0.1:0\"\n",
    );
    let path = pki.path().join("redmond.hq.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A GREEN `identity` object of an organisation named `name`, under `id`.
fn identity_named(id: &str, name: &str) -> Value {
    json!({
        "type": "identity", "spec_version": "2.1", "id": id,
        "created": "2020-01-01T00:00:00.000Z", "modified": "2026-01-01T00:00:00.000Z",
        "name": name, "identity_class": "organization",
        "object_marking_refs": [GREEN],
    })
}

/// An identity named `berlin.office` is refused, but one named `berlin\u{200b}.office`
/// (a zero-width space) or `berlin.office\u{feff}` shows as the same name in every STIX
/// tool and was kept. Characters that do not show are left out of the comparison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_named_as_a_node_with_invisible_characters_is_refused() {
    let pki = Pki::new();
    pki.node("redmond.hq");
    pki.node("berlin.office");
    let node = serve_taxii(&write_config(&pki));
    let analyst = tls(&pki, "analyst.soc");
    let path = objects_path(&analyst, &node).await;

    for (n, name) in [
        "berlin\u{200b}.office",
        "berlin.office\u{feff}",
        "\u{2060}redmond.hq",
        "redmond\u{00ad}.hq",
        "berlin.\u{200d}office\u{200c}",
    ]
    .into_iter()
    .enumerate()
    {
        let identity = format!("identity--d4d4d4d4-0000-4000-8000-{n:012}");
        let object = identity_named(&identity, name);
        let status = post_objects(&analyst, &node, &path, vec![object.clone()]).await;
        assert_eq!(status["success_count"], json!(0), "{object}: {status}");
        let message = status["failures"][0]["message"].as_str().unwrap();
        assert!(message.contains("identity named"), "{message}");
    }
    // A vendor whose name differs by a visible character is kept.
    let vendor = identity_named(
        "identity--d4d4d4d4-0000-4000-8000-0000000000aa",
        "berlin.office-vendor",
    );
    let status = post_objects(&analyst, &node, &path, vec![vendor]).await;
    assert_eq!(status["success_count"], json!(1), "{status}");
}

/// An identity named `berlin.\u{43e}ffice` with letters of another script that look
/// like Latin ones (a Cyrillic `о`, a Greek `ο`, full-width letters, a digit one for a
/// small L) shows as the node's name to a reader and was kept. Names are compared by
/// what they look like (Unicode's confusable skeleton).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_named_as_a_node_in_look_alike_letters_is_refused() {
    let pki = Pki::new();
    pki.node("redmond.hq");
    pki.node("berlin.office");
    let node = serve_taxii(&write_config(&pki));
    let analyst = tls(&pki, "analyst.soc");
    let path = objects_path(&analyst, &node).await;

    for (n, name) in [
        "berlin.\u{43e}ffic\u{435}",
        "b\u{435}rlin.\u{3bf}ffice",
        "\u{ff42}\u{ff45}\u{ff52}\u{ff4c}\u{ff49}\u{ff4e}\u{ff0e}office",
        "ber1in.office",
        "REDM\u{41e}ND.HQ",
        "redmond\u{2024}hq",
    ]
    .into_iter()
    .enumerate()
    {
        let identity = format!("identity--d5d5d5d5-0000-4000-8000-{n:012}");
        let object = identity_named(&identity, name);
        let status = post_objects(&analyst, &node, &path, vec![object.clone()]).await;
        assert_eq!(status["success_count"], json!(0), "{object}: {status}");
        let message = status["failures"][0]["message"].as_str().unwrap();
        assert!(message.contains("identity named"), "{message}");
    }
    // Names that read differently are kept.
    for (n, name) in ["Berlin Office", "berlin.offices", "Bern office"]
        .into_iter()
        .enumerate()
    {
        let vendor = identity_named(
            &format!("identity--d5d5d5d5-0000-4000-8000-0000000000a{n}"),
            name,
        );
        let status = post_objects(&analyst, &node, &path, vec![vendor]).await;
        assert_eq!(status["success_count"], json!(1), "{name}: {status}");
    }
}

// ---------------------------------------------------------------------------------
// A new version, written through TAXII, of an item dropped as expired.

const DAY: i64 = 24 * 3600 * 1000;
const AMBER: &str = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421";

/// A TAXII writer cannot name recipients, so a new version it writes keeps the
/// distribution of the version it replaces. Once a compaction has dropped that version
/// as expired, nothing was found to keep, and a new version of an indicator this node
/// had published for berlin.office alone was signed for every partner. With the
/// replaced version's distribution gone, the write is refused; it can be published
/// with its recipients named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_of_an_own_item_dropped_as_expired_is_not_widened() {
    const RESTRICTED: &str = "indicator--d6d6d6d6-0000-4000-8000-000000000001";
    let f: Fixture = fixture();
    let config = write_config(&f.pki);
    let data = f.pki.path().join("data-hq");
    let id = ItemId::parse(RESTRICTED).unwrap();
    {
        // redmond.hq's own AMBER indicator, for berlin.office alone, retired 40 days
        // ago and dropped.
        let store = common::open_store(&data, &f.hq.id, 16 << 20).unwrap();
        let now = now_ms();
        let mut retired = common::signed::indicator(
            &id,
            IndicatorType::Domain,
            "restricted.example",
            now - 40 * DAY,
            Tlp::Amber,
            &[],
        );
        if let ItemKind::Indicator(i) = &mut retired.kind {
            i.valid_from_ms = now - 60 * DAY;
            i.valid_until_ms = Some(now - 40 * DAY);
        }
        let signer = BundleSigner::new(
            f.hq.id.clone(),
            f.hq.private_key_pkcs8().unwrap(),
            f.hq.certificate_der(),
        )
        .unwrap();
        let distribution = Distribution {
            max_hops: None,
            recipients: vec![f.berlin.id.clone()],
        };
        let wire = signer
            .sign(&[retired], &distribution, now)
            .unwrap()
            .to_wire(|_| true);
        let signed = verify(&wire, &f.certs, &f.trust, now).unwrap();
        store.accept(&signed, &local(&f.hq.id), now).unwrap();
        store.flush().unwrap();
        assert_eq!(
            store
                .compact(Compaction::default())
                .unwrap()
                .expired_dropped,
            1
        );
        assert!(store.get(&id).unwrap().is_none());
    }
    let node = serve_taxii(&config);
    let analyst = tls(&f.pki, "analyst.soc");
    let path = objects_path(&analyst, &node).await;

    let mut again = indicator(RESTRICTED, "restricted.example", AMBER);
    let today = stix_timestamp(now_ms());
    again["modified"] = json!(today);
    let status = post_objects(&analyst, &node, &path, vec![again]).await;
    assert_eq!(status["success_count"], json!(0), "{status}");
    let message = status["failures"][0]["message"].as_str().unwrap();
    assert!(message.contains("naming its recipients"), "{message}");
    assert_eq!(
        get(&analyst, node.taxii, &format!("{path}{RESTRICTED}/"))
            .await
            .status,
        404
    );
}

/// `ms` as a STIX timestamp (UTC, milliseconds).
fn stix_timestamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

// ---------------------------------------------------------------------------------
// What held: forms read as they should be.

/// A UUID written with JSON escapes for its hyphens is read once parsed (properties are
/// kept as parsed and written back canonical); an IPv4-mapped address compared as ipv6
/// names ipv6.
#[test]
fn escaped_hyphens_and_mapped_addresses_are_read() {
    let object: Value = serde_json::from_str(
        r#"{"name": "x", "x_note": "see a1a1a1a1\u002d0000\u002D4000-8000-000000000002"}"#,
    )
    .unwrap();
    let item = context("malware--a1a1a1a1-0000-4000-8000-000000000009", object);
    let referenced: Vec<String> = item.referenced().iter().map(|r| r.to_string()).collect();
    assert_eq!(
        referenced,
        ["indicator--a1a1a1a1-0000-4000-8000-000000000002"]
    );
    let mapped =
        entente::model::observables::observables("[ipv6-addr:value = '::ffff:198.51.100.1']");
    assert!(mapped.types().contains(&IndicatorType::Ipv6), "{mapped:?}");
}
