//! Attacks on the write paths, as an analyst whose policy is narrowed or not and as the
//! author of content that later reaches other partners, each against a real `entente
//! serve` process:
//!
//! - a granular marking on a property the importer keeps (`external_references`,
//!   `created`, `created_by_ref`, `lang`, `pattern_version`) was taken for a marking
//!   on a property it drops, so what the author marked RED left with a GREEN object;
//! - a write of an id that a compaction dropped as expired was refused by the store
//!   naming the origin of the dropped version, which the writer never could see;
//! - `created_by_ref` naming another node's identity was refused only when written in
//!   lower case.

mod common;

use std::sync::Arc;

use entente::NodeId;
use entente::engine::now_ms;
use entente::model::{IndicatorType, ItemId, ItemKind, Tlp};
use entente::rpc::proto::PublishRequest;
use entente::store::Source;
use entente::store::compact::Compaction;
use entente::store::prelude::*;
use entente::wire;
use serde_json::{Value, json};

use common::https::{get, indicator, objects_path, post, post_objects, tls};
use common::signed::{Fixture, bundle, fixture};
use common::{Pki, TaxiiNode, node_section, serve_taxii, taxii_node_client};

const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
const AMBER: &str = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421";
const RED: &str = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1";

const DAY: i64 = 24 * 3600 * 1000;

/// The configuration of redmond.hq in `pki`: berlin.office as a peer, an analyst that
/// sees everything (`analyst.soc`), an analyst narrowed to GREEN (`analyst.narrow`), a
/// GREEN read-only researcher, and a TAXII listener.
fn write_config(pki: &Pki) -> std::path::PathBuf {
    for who in ["analyst.soc", "analyst.narrow", "researcher.uni-x"] {
        pki.client(who);
    }
    let hq = NodeId::new("redmond.hq").unwrap();
    let mut text = node_section(pki, &hq, &pki.path().join("data-hq"));
    text.push_str(
        "\n[[peer]]\nid = \"berlin.office\"\naddress = \"127.0.0.1:1\"\nrole = \"peer\"\nmax_tlp = \"AMBER\"\nallow_types = [\"*\"]\n\
         \n[[client]]\nid = \"analyst.soc\"\nrole = \"analyst\"\n\
         \n[[client]]\nid = \"analyst.narrow\"\nrole = \"analyst\"\nallow_types = [\"*\"]\nmax_tlp = \"GREEN\"\n\
         \n[[client]]\nid = \"researcher.uni-x\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"GREEN\"\n\
         \n[taxii]\nlisten = \"127.0.0.1:0\"\n",
    );
    let path = pki.path().join("redmond.hq.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every object `reader` can list, as one text (one page is enough here).
async fn listing(reader: &Arc<rustls::ClientConfig>, node: &TaxiiNode, path: &str) -> String {
    let reply = get(reader, node.taxii, &format!("{path}?limit=1000")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.text()
}

// ---------------------------------------------------------------------------------
// Granular markings on properties the importer keeps.

/// The importer once dropped `created`, `created_by_ref`, `external_references`,
/// `lang` and `pattern_version`, so a granular marking whose selectors named only those
/// was ignored. They are kept now and exported with the object: what its author marked
/// RED there must raise the object to RED, not leave with it at GREEN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granular_marking_on_a_kept_property_raises_the_object() {
    let pki = Pki::new();
    pki.node("redmond.hq");
    pki.node("berlin.office");
    let node = serve_taxii(&write_config(&pki));
    let analyst = tls(&pki, "analyst.soc");
    let researcher = tls(&pki, "researcher.uni-x");
    let path = objects_path(&analyst, &node).await;

    let secret = "https://cases.internal.example/informant-4711";
    let marked = |n: u32, property: &str, value: Value, selector: &str| {
        let id = format!("indicator--d1d1d1d1-0000-4000-8000-{n:012}");
        let mut object = indicator(&id, &format!("marked-{n}.example"), GREEN);
        object[property] = value;
        object["granular_markings"] = json!([{ "marking_ref": RED, "selectors": [selector] }]);
        (id, object)
    };
    let cases = [
        marked(
            1,
            "external_references",
            json!([{ "source_name": "case", "url": secret }]),
            "external_references.[0].url",
        ),
        marked(
            2,
            "created_by_ref",
            json!("identity--d1d1d1d1-0000-4000-8000-0000000000aa"),
            "created_by_ref",
        ),
        marked(3, "lang", json!("de"), "lang"),
        marked(4, "pattern_version", json!("2.1"), "pattern_version"),
        marked(5, "created", json!("2024-12-24T00:00:00.000Z"), "created"),
    ];
    let mut malware = json!({
        "type": "malware", "spec_version": "2.1",
        "id": "malware--d1d1d1d1-0000-4000-8000-000000000006",
        "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
        "name": "Loader", "is_family": true, "object_marking_refs": [GREEN],
        "external_references": [{ "source_name": "case", "url": secret }],
    });
    malware["granular_markings"] =
        json!([{ "marking_ref": RED, "selectors": ["external_references"] }]);
    let mut objects: Vec<Value> = cases.iter().map(|(_, o)| o.clone()).collect();
    objects.push(malware.clone());
    let status = post_objects(&analyst, &node, &path, objects).await;
    assert_eq!(status["success_count"], json!(6), "{status}");

    let listed = listing(&researcher, &node, &path).await;
    assert!(
        !listed.contains(secret),
        "a RED property reached GREEN: {listed}"
    );
    for id in cases
        .iter()
        .map(|(id, _)| id.as_str())
        .chain([malware["id"].as_str().unwrap()])
    {
        assert!(!listed.contains(id), "{id} was served at GREEN: {listed}");
        // The analyst reads it back at RED.
        let object = get(&analyst, node.taxii, &format!("{path}{id}/"))
            .await
            .json();
        let served = object["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["id"] == json!(id))
            .cloned()
            .unwrap_or_default();
        assert_eq!(served["object_marking_refs"], json!([RED]), "{object}");
    }
}

// ---------------------------------------------------------------------------------
// A write of an id dropped as expired.

/// A compaction drops an indicator whose `valid_until` passed long ago and remembers
/// its origin, so that an older version offered again is not taken as new. A writer
/// whose policy withholds that indicator, writing the same id, was told by the store
/// that "the id is held from berlin.office": the origin of something it never could
/// see (for an id derived from a value, that berlin.office once published the value).
/// It must be answered as any id held and withheld from it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_of_an_id_dropped_as_expired_does_not_name_its_origin() {
    let f: Fixture = fixture();
    let config = write_config(&f.pki);
    let data = f.pki.path().join("data-hq");
    let dropped = ItemId::parse("indicator--d2d2d2d2-0000-4000-8000-000000000001").unwrap();
    {
        // berlin.office's AMBER indicator, retired 40 days ago and dropped.
        let store = common::open_store(&data, &f.hq.id, 16 << 20).unwrap();
        let now = now_ms();
        let first = common::signed::indicator(
            &dropped,
            IndicatorType::Domain,
            "retired.berlin.example",
            now - 60 * DAY,
            Tlp::Amber,
            &[],
        );
        let mut retired = first.clone();
        retired.modified_ms = now - 40 * DAY;
        if let ItemKind::Indicator(i) = &mut retired.kind {
            i.valid_until_ms = Some(now - 40 * DAY);
        }
        let from_berlin = Source {
            received_from: f.berlin.id.clone(),
            hops: 1,
        };
        for version in [first, retired] {
            store
                .accept(&bundle(&f, &f.berlin, &[version]), &from_berlin, now)
                .unwrap();
        }
        store.flush().unwrap();
        assert_eq!(
            store
                .compact(Compaction::default())
                .unwrap()
                .expired_dropped,
            1
        );
        assert!(store.get(&dropped).unwrap().is_none());
    }
    let node = serve_taxii(&config);
    let analyst = tls(&f.pki, "analyst.soc");
    let narrow = tls(&f.pki, "analyst.narrow");
    let path = objects_path(&analyst, &node).await;

    // An AMBER indicator held now, withheld from the narrowed analyst.
    let withheld = "indicator--d2d2d2d2-0000-4000-8000-000000000002";
    let status = post_objects(
        &analyst,
        &node,
        &path,
        vec![indicator(withheld, "held.hq.example", AMBER)],
    )
    .await;
    assert_eq!(status["success_count"], json!(1), "{status}");

    // Through TAXII: the same failure, in the same words.
    let mut said = Vec::new();
    for id in [dropped.as_str(), withheld] {
        let status = post_objects(
            &narrow,
            &node,
            &path,
            vec![indicator(id, "written.example", GREEN)],
        )
        .await;
        assert_eq!(status["failure_count"], json!(1), "{status}");
        let message = status["failures"][0]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(!message.contains("berlin"), "{message}");
        said.push(message.replace(id, "ID"));
    }
    assert_eq!(
        said[0], said[1],
        "a dropped id and a withheld one answer apart"
    );

    // Through gRPC too.
    let client = taxii_node_client(&f.pki, &node, "analyst.narrow").await;
    let mut answers = Vec::new();
    for id in [dropped.as_str(), withheld] {
        let item = wire::Item {
            id: id.to_owned(),
            modified_unix_ms: now_ms(),
            tlp: wire::Tlp::Green as i32,
            tags: vec![],
            kind: Some(wire::item::Kind::Indicator(wire::Indicator {
                indicator_type: "domain".into(),
                value: "written.example".into(),
                ..Default::default()
            })),
        };
        let request = PublishRequest {
            items: vec![item],
            distribution: None,
            groups: vec![],
        };
        let answer = client.publish(tokio_stream::iter(vec![request])).await;
        let answer = format!("{answer:?}");
        assert!(!answer.contains("berlin"), "{answer}");
        answers.push(answer.replace(id, "ID"));
    }
    assert_eq!(
        answers[0], answers[1],
        "a dropped id and a withheld one answer apart"
    );
}

// ---------------------------------------------------------------------------------
// `created_by_ref` in another case.

/// STIX ids are read without regard to case here (`ItemId::parse`) and by many tools;
/// the check that an object names no other node as its creator compared the text as
/// written, so `IDENTITY--…` in upper case passed and was exported as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_identity_in_upper_case_is_no_creator_either() {
    let pki = Pki::new();
    pki.node("redmond.hq");
    pki.node("berlin.office");
    let node = serve_taxii(&write_config(&pki));
    let analyst = tls(&pki, "analyst.soc");
    let path = objects_path(&analyst, &node).await;
    let berlin = entente::interop::identity_id("berlin.office");

    for (n, creator) in [berlin.to_ascii_uppercase(), {
        let (ty, uuid) = berlin.split_once("--").unwrap();
        format!("{ty}--{}", uuid.to_ascii_uppercase())
    }]
    .into_iter()
    .enumerate()
    {
        let id = format!("indicator--d3d3d3d3-0000-4000-8000-{n:012}");
        let mut object = indicator(&id, &format!("forged-{n}.example"), GREEN);
        object["created_by_ref"] = json!(creator);
        let malware = json!({
            "type": "malware", "spec_version": "2.1",
            "id": format!("malware--d3d3d3d3-0000-4000-8000-{n:012}"),
            "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
            "name": "Loader", "is_family": true, "object_marking_refs": [GREEN],
            "created_by_ref": creator,
        });
        for object in [object, malware] {
            let status = post_objects(&analyst, &node, &path, vec![object.clone()]).await;
            assert_eq!(status["success_count"], json!(0), "{object}: {status}");
            let message = status["failures"][0]["message"].as_str().unwrap();
            assert!(
                message.contains("created_by_ref") && message.contains("berlin.office"),
                "{message}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// An identity that passes for a node's own.

/// An analyst could publish an `identity` object named `berlin.office` under an id of
/// its own and an indicator whose `created_by_ref` names it: the check of creators
/// looks at the ids of nodes' identities only, so both were exported, and a STIX tool
/// showed berlin.office as the indicator's author. An identity named as a node of the
/// federation is refused, as one with a node's identity id is, and so is one with the
/// id of the identity that defines the extensions exports use (exports would hold two
/// objects under that id, the later one the writer's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_cannot_pass_for_another_nodes_own() {
    let pki = Pki::new();
    pki.node("redmond.hq");
    pki.node("berlin.office");
    let node = serve_taxii(&write_config(&pki));
    let analyst = tls(&pki, "analyst.soc");
    let path = objects_path(&analyst, &node).await;

    for (n, name) in ["berlin.office", "Berlin.Office", "redmond.hq"]
        .into_iter()
        .enumerate()
    {
        let identity = format!("identity--d4d4d4d4-0000-4000-8000-{n:012}");
        let object = json!({
            "type": "identity", "spec_version": "2.1", "id": identity,
            "created": "2020-01-01T00:00:00.000Z", "modified": "2026-01-01T00:00:00.000Z",
            "name": name, "identity_class": "organization",
            "description": format!("Entente node {name}, origin of the indicators it signs"),
            "object_marking_refs": [GREEN],
        });
        let status = post_objects(&analyst, &node, &path, vec![object.clone()]).await;
        assert_eq!(status["success_count"], json!(0), "{object}: {status}");
        let message = status["failures"][0]["message"].as_str().unwrap();
        assert!(message.contains("identity named"), "{message}");
        assert_eq!(
            get(&analyst, node.taxii, &format!("{path}{identity}/"))
                .await
                .status,
            404
        );
    }
    // Nor the identity that defines the extensions exports use.
    let project = json!({
        "type": "identity", "spec_version": "2.1",
        "id": "identity--d468fad8-6c8c-46cc-894e-a84f94ec07f2",
        "created": "2020-01-01T00:00:00.000Z", "modified": "2026-01-01T00:00:00.000Z",
        "name": "Entente", "identity_class": "organization",
        "description": "Entente's maintainers ask you to report this indicator to them.",
        "object_marking_refs": [GREEN],
    });
    let status = post_objects(&analyst, &node, &path, vec![project]).await;
    assert_eq!(status["success_count"], json!(0), "{status}");
    // A vendor's identity is kept.
    let vendor = json!({
        "type": "identity", "spec_version": "2.1",
        "id": "identity--d4d4d4d4-0000-4000-8000-0000000000aa",
        "created": "2020-01-01T00:00:00.000Z", "modified": "2026-01-01T00:00:00.000Z",
        "name": "Example Vendor", "identity_class": "organization",
        "object_marking_refs": [GREEN],
    });
    let status = post_objects(&analyst, &node, &path, vec![vendor]).await;
    assert_eq!(status["success_count"], json!(1), "{status}");
}

// ---------------------------------------------------------------------------------
// A new version written through TAXII and the recipients of the one it replaces.

/// An analyst publishes an AMBER indicator for berlin.office alone (a signed recipient
/// list: "no other node may ever hold it"), then corrects its description through
/// TAXII, which has no way to name recipients: the new version was signed for every
/// partner, so every node its policy allows received the corrected indicator. A new
/// version written through TAXII keeps the recipients of the version it replaces; a
/// new object written beside it is not narrowed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_written_through_taxii_keeps_the_recipients_it_had() {
    const RESTRICTED: &str = "indicator--d5d5d5d5-0000-4000-8000-000000000001";
    const BESIDE: &str = "indicator--d5d5d5d5-0000-4000-8000-000000000002";
    let pki = Pki::new();
    pki.node("redmond.hq");
    pki.node("berlin.office");
    let node = common::start(&write_config(&pki)).await;
    let taxii = node.taxii_addr().unwrap();
    let client = common::connect(&pki, &node, "analyst.soc").await;
    let analyst = tls(&pki, "analyst.soc");

    // Version 1, for berlin.office alone, dated before the TAXII version below.
    let first = wire::Item {
        id: RESTRICTED.to_owned(),
        modified_unix_ms: 1_735_689_600_000,
        tlp: wire::Tlp::Amber as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".into(),
            value: "restricted.example".into(),
            ..Default::default()
        })),
    };
    let request = PublishRequest {
        items: vec![first],
        distribution: Some(wire::Distribution {
            max_hops: None,
            recipients: vec!["berlin.office".into()],
        }),
        groups: vec![],
    };
    client
        .publish(tokio_stream::iter(vec![request]))
        .await
        .unwrap();

    let listed = get(&analyst, taxii, "/api/collections/").await.json();
    let collection = listed["collections"][0]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/collections/{collection}/objects/");
    let mut corrected = indicator(RESTRICTED, "restricted.example", AMBER);
    corrected["description"] = json!("corrected: seen in the March campaign");
    let beside = indicator(BESIDE, "beside.example", AMBER);
    let posted = post(
        &analyst,
        taxii,
        &path,
        &json!({ "objects": [corrected, beside] }).to_string(),
    )
    .await;
    assert_eq!(posted.status, 202, "{}", posted.text());
    assert_eq!(
        posted.json()["success_count"],
        json!(2),
        "{}",
        posted.text()
    );

    let store = node.engine().store();
    let recipients = |id: &str| {
        let stored = store.get(&ItemId::parse(id).unwrap()).unwrap().unwrap();
        let header = store.bundle_header(&stored.bundle_id).unwrap().unwrap();
        let distribution = entente::crypto::parse_header(&header)
            .unwrap()
            .0
            .distribution;
        (stored.item, distribution.recipients)
    };
    let (item, kept) = recipients(RESTRICTED);
    match item.kind {
        ItemKind::Indicator(i) => {
            assert_eq!(i.description, "corrected: seen in the March campaign")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        kept,
        [NodeId::new("berlin.office").unwrap()],
        "the corrected version left the recipient list"
    );
    assert!(
        recipients(BESIDE).1.is_empty(),
        "a new object was narrowed with it"
    );
}

// ---------------------------------------------------------------------------------
// What the store says of an item that arrived between the check and the write.

/// Publishing checks the items against the publisher's policy, signs them, and only
/// then writes them: another origin's version of the same id can be stored between the
/// two steps (a pull, another writer). The store then refuses the item naming the
/// origin it holds ("the id is held from berlin.office"), and that reason went to a
/// publisher whose policy withholds the item. A publisher is told the store's reason
/// only about what it may see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_arrives_between_the_check_and_the_write_is_not_named_to_the_writer() {
    let f: Fixture = fixture();
    let node = common::start(&write_config(&f.pki)).await;
    let engine = node.engine();
    let narrow = entente::model::Partner {
        id: NodeId::new("analyst.narrow").unwrap(),
        kind: entente::model::PartnerKind::Client,
        role: entente::model::Role::Analyst,
    };
    let soc = entente::model::Partner {
        id: NodeId::new("analyst.soc").unwrap(),
        ..narrow.clone()
    };
    let now = now_ms();
    let id = ItemId::parse("indicator--d6d6d6d6-0000-4000-8000-000000000001").unwrap();
    let mine = common::signed::indicator(
        &id,
        IndicatorType::Domain,
        "raced.example",
        now,
        Tlp::Green,
        &[],
    );
    let signed = engine
        .sign(
            &narrow,
            std::slice::from_ref(&mine),
            &Default::default(),
            now,
        )
        .unwrap();
    let signed_by_soc = engine
        .sign(&soc, &[mine], &Default::default(), now)
        .unwrap();
    // berlin.office's AMBER version arrives before the write.
    let theirs = common::signed::indicator(
        &id,
        IndicatorType::Domain,
        "raced.example",
        now - 1000,
        Tlp::Amber,
        &[],
    );
    engine
        .store()
        .accept(
            &bundle(&f, &f.berlin, &[theirs]),
            &Source {
                received_from: f.berlin.id.clone(),
                hops: 1,
            },
            now,
        )
        .unwrap();
    for (publisher, signed) in [(&narrow, signed), (&soc, signed_by_soc)] {
        let receipt = engine.store_own(&signed, now_ms()).unwrap();
        let [(_, rejection)] = &receipt.report.rejected[..] else {
            panic!("{:?}", receipt.report);
        };
        let told = engine.rejection_for(publisher, &id, rejection, now_ms());
        if publisher.id.as_str() == "analyst.narrow" {
            assert_eq!(told, format!("{id} cannot be written by analyst.narrow"));
        } else {
            // One that may see it is told why.
            assert!(told.contains("berlin.office"), "{told}");
        }
    }
}
