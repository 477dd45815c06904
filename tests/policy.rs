//! Per-partner policy end to end: explain in the operator's words, explain agreeing
//! with what is delivered, export through the policy, reload narrowing an open stream,
//! sharing groups at publish time, and policy errors in the configuration.

mod common;

use std::time::Duration;

use common::{Pki, client, write_config};
use entente::client::{ClientError, NodeClient};
use entente::rpc::proto::{ItemFilter, PublishRequest, StoredItem};
use entente::wire::{self, Tlp};
use entente::{Node, NodeId};

const DEADLINE: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {DEADLINE:?}"))
}

fn item(ty: &str, value: &str, tlp: Tlp, tags: &[&str]) -> wire::Item {
    wire::Item {
        id: entente::model::ItemId::new_random().to_string(),
        modified_unix_ms: 0,
        tlp: tlp as i32,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: ty.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        })),
    }
}

async fn publish(
    client: &NodeClient,
    items: Vec<wire::Item>,
    groups: Vec<String>,
) -> Result<(), ClientError> {
    let request = PublishRequest {
        items,
        distribution: None,
        groups,
    };
    within("publish", client.publish(tokio_stream::iter(vec![request])))
        .await
        .map(|_| ())
}

async fn connect(pki: &Pki, node: &Node, who: &str) -> NodeClient {
    let who = NodeId::new(who).unwrap();
    let tls = pki.material(&who).client_config().unwrap();
    within(
        "connect",
        NodeClient::connect(tls, &who, &node.local_addr().to_string(), node.id()),
    )
    .await
    .unwrap()
}

/// A node with an analyst, the operator's own identity, and a read-only researcher
/// whose policy entry is `reader_policy` (extra TOML lines).
struct Setup {
    pki: Pki,
    config: std::path::PathBuf,
    node: Node,
}

fn config_text(pki: &Pki, id: &NodeId, reader_policy: &str) -> std::path::PathBuf {
    let path = write_config(pki, id, &[client("analyst.alice", "analyst")], &[]);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[[client]]\nid = \"researcher.uni-x\"\nrole = \"read_only\"\n{reader_policy}\n\n[groups]\nops-cobalt = [\"berlin.office\", \"singapore.office\"]\n"
    ));
    std::fs::write(&path, text).unwrap();
    path
}

async fn setup(reader_policy: &str) -> Setup {
    let pki = Pki::new();
    let id = pki.node("redmond.hq");
    pki.client("analyst.alice");
    pki.client("researcher.uni-x");
    let config = config_text(&pki, &id, reader_policy);
    let node = common::start(&config).await;
    Setup { pki, config, node }
}

fn value(stored: &StoredItem) -> String {
    match stored.item.as_ref().and_then(|i| i.kind.as_ref()) {
        Some(wire::item::Kind::Indicator(i)) => i.value.clone(),
        other => panic!("not an indicator: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_speaks_the_operators_language_and_agrees_with_delivery() {
    let s = setup("allow_types = [\"domain\", \"ipv4\"]\ndeny_tags = [\"pii\"]").await;
    let analyst = connect(&s.pki, &s.node, "analyst.alice").await;
    let reader = connect(&s.pki, &s.node, "researcher.uni-x").await;
    let operator = connect(&s.pki, &s.node, "redmond.hq").await;
    let items = vec![
        item("domain", "amber.example.com", Tlp::Amber, &[]),
        item("domain", "green.example.com", Tlp::Green, &[]),
        item("md5", "d41d8cd98f00b204e9800998ecf8427e", Tlp::Green, &[]),
        item("ipv4", "192.0.2.44", Tlp::Clear, &["pii"]),
        item("ipv4", "192.0.2.45", Tlp::Clear, &[]),
    ];
    let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    publish(&analyst, items, vec![]).await.unwrap();

    let rule = |i: usize| {
        let operator = &operator;
        let id = ids[i].clone();
        async move {
            within("explain", operator.explain("researcher.uni-x", &id))
                .await
                .unwrap()
        }
    };
    assert_eq!(
        rule(0).await.rule,
        "withheld: TLP:AMBER is above max_tlp GREEN for read_only client researcher.uni-x"
    );
    assert_eq!(
        rule(2).await.rule,
        "withheld: type md5 is not in allow_types for read_only client researcher.uni-x"
    );
    assert_eq!(
        rule(3).await.rule,
        "withheld: tag pii is in deny_tags for read_only client researcher.uni-x"
    );
    assert!(rule(1).await.rule.starts_with("allowed:"));

    // Explain agrees with what Get, Query and Export deliver, item by item.
    let delivered: std::collections::BTreeSet<String> =
        within("query", reader.query(ItemFilter::default(), 100, vec![]))
            .await
            .unwrap()
            .items
            .iter()
            .map(value)
            .collect();
    let mut exported = std::collections::BTreeSet::new();
    let mut stream = within("export", reader.export(ItemFilter::default()))
        .await
        .unwrap();
    while let Some(chunk) = within("export chunk", stream.message()).await.unwrap() {
        let object: serde_json::Value = serde_json::from_str(&chunk.stix_json).unwrap();
        exported.insert(object["id"].as_str().unwrap().to_owned());
    }
    for (i, id) in ids.iter().enumerate() {
        let explained = rule(i).await;
        let got = within("get", reader.get(id)).await.unwrap();
        assert_eq!(
            explained.allow,
            got.is_some(),
            "explain and get disagree on item {i}: {}",
            explained.rule
        );
        assert_eq!(
            explained.allow,
            exported.contains(id),
            "explain and export disagree on item {i}"
        );
        let v = value(explained.item.as_ref().unwrap());
        assert_eq!(
            explained.allow,
            delivered.contains(&v),
            "explain and query disagree on {v}"
        );
    }
    assert_eq!(
        delivered,
        ["192.0.2.45", "green.example.com"].map(String::from).into()
    );

    // A read-only client may not use the operator's service.
    let denied = within("explain", reader.explain("researcher.uni-x", &ids[0]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            denied,
            ClientError::Status {
                code: tonic::Code::PermissionDenied,
                ..
            }
        ),
        "{denied}"
    );
    s.node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_narrows_an_open_stream_from_its_next_message() {
    let s = setup("allow_types = [\"*\"]").await;
    let analyst = connect(&s.pki, &s.node, "analyst.alice").await;
    let reader = connect(&s.pki, &s.node, "researcher.uni-x").await;
    let mut stream = within("subscribe", reader.subscribe(ItemFilter::default()))
        .await
        .unwrap();

    // The subscription is live once a marker arrives.
    publish(
        &analyst,
        vec![item("domain", "marker.example.com", Tlp::Green, &[])],
        vec![],
    )
    .await
    .unwrap();
    let first = within("marker", stream.message()).await.unwrap().unwrap();
    assert_eq!(value(&first), "marker.example.com");

    // Narrow the reader to IPv4 only and reload, as SIGHUP would.
    let narrowed = config_text(&s.pki, s.node.id(), "allow_types = [\"ipv4\"]");
    assert_eq!(narrowed, s.config);
    s.node.reload_policy().expect("reload");

    publish(
        &analyst,
        vec![
            item("domain", "after-reload.example.com", Tlp::Green, &[]),
            item("ipv4", "198.51.100.99", Tlp::Green, &[]),
        ],
        vec![],
    )
    .await
    .unwrap();
    let next = within("next item", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        value(&next),
        "198.51.100.99",
        "the domain must be withheld after the reload"
    );

    // A configuration that does not validate is refused and the policy in force stays.
    std::fs::write(&s.config, "[node]\nid = \"broken\"\n").unwrap();
    assert!(s.node.reload_policy().is_err());
    publish(
        &analyst,
        vec![item("ipv4", "198.51.100.100", Tlp::Green, &[])],
        vec![],
    )
    .await
    .unwrap();
    let still = within("after refused reload", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value(&still), "198.51.100.100");
    s.node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reloads_over_the_admin_service() {
    let s = setup("allow_types = [\"*\"]").await;
    let operator = connect(&s.pki, &s.node, "redmond.hq").await;
    let reader = connect(&s.pki, &s.node, "researcher.uni-x").await;
    let analyst = connect(&s.pki, &s.node, "analyst.alice").await;
    publish(
        &analyst,
        vec![item("domain", "seen.example.com", Tlp::Green, &[])],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(
        within("q", reader.query(ItemFilter::default(), 10, vec![]))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    config_text(&s.pki, s.node.id(), "allow_types = [\"url\"]");
    let answer = within("reload", operator.reload_policy()).await.unwrap();
    assert_eq!(answer.policy_hash.len(), 64);
    assert_eq!(answer.restart_needed, Vec::<String>::new());
    // A setting only a restart applies is named by every reload until the restart, not
    // only by the one that read the change.
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str("\n[limits]\nstreams_per_partner = 7\n");
    std::fs::write(&s.config, text).unwrap();
    for _ in 0..2 {
        let answer = within("reload", operator.reload_policy()).await.unwrap();
        assert_eq!(answer.restart_needed, ["[limits]"]);
    }
    assert!(
        answer.description.contains("allow_types:         url"),
        "{}",
        answer.description
    );
    assert!(
        within("q", reader.query(ItemFilter::default(), 10, vec![]))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // Only the operator and admin clients may reload.
    let denied = within("reload", analyst.reload_policy()).await.unwrap_err();
    assert!(
        matches!(
            denied,
            ClientError::Status {
                code: tonic::Code::PermissionDenied,
                ..
            }
        ),
        "{denied}"
    );
    s.node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharing_groups_are_expanded_at_publish_time() {
    let s = setup("allow_types = [\"*\"]").await;
    let analyst = connect(&s.pki, &s.node, "analyst.alice").await;
    publish(
        &analyst,
        vec![item("domain", "grouped.example.com", Tlp::Green, &[])],
        vec!["ops-cobalt".into()],
    )
    .await
    .unwrap();
    let err = publish(
        &analyst,
        vec![item("domain", "nogroup.example.com", Tlp::Green, &[])],
        vec!["no-such".into()],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { code: tonic::Code::InvalidArgument, message, .. } if message.contains("no-such")),
        "{err}"
    );
    s.node.shutdown(DEADLINE).await.unwrap();
}

#[test]
fn policy_fields_are_validated_with_the_field_named() {
    let pki = Pki::new();
    let id = pki.node("redmond.hq");
    for (extra, expect) in [
        ("max_tlp = \"PURPLE\"", "client[1].max_tlp"),
        ("allow_types = [\"ipv5\"]", "client[1].allow_types"),
        ("allow_types = [\"*\", \"ipv4\"]", "must stand alone"),
        ("embargo = \"6 hours\"", "client[1].embargo"),
        ("deny_tags = [\"has space\"]", "client[1].deny_tags"),
        ("forward_third_party = true", "peer nodes only"),
    ] {
        let path = config_text(&pki, &id, extra);
        let err = entente::Config::load(&path).unwrap_err().to_string();
        assert!(err.contains(expect), "{extra}: {err}");
    }
    // And a good one compiles, with the embargo and the group in the description.
    let path = config_text(&pki, &id, "allow_types = [\"*\"]\nembargo = \"6h\"");
    let config = entente::Config::load(&path).unwrap();
    let policy = entente::policy::Policy::compile(&config.policy_spec());
    let text = policy.describe();
    assert!(text.contains("embargo:             6h"), "{text}");
    assert!(
        text.contains("group ops-cobalt: berlin.office, singapore.office"),
        "{text}"
    );
}

#[test]
fn policy_check_prints_the_compiled_policy() {
    let pki = Pki::new();
    let id = pki.node("redmond.hq");
    let path = write_config(
        &pki,
        &id,
        &[common::peer("berlin.office", "127.0.0.1:1")],
        &[],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["policy", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // A peer without max_tlp and allow_types receives nothing, and the operator is told.
    assert!(text.contains("peer node berlin.office"), "{text}");
    assert!(
        text.contains("WARNING: this partner receives nothing"),
        "{text}"
    );
    assert!(text.contains("policy hash "), "{text}");

    // Explain a file of items for a partner, without a running node.
    let input = pki.path().join("items.txt");
    std::fs::write(&input, "evil.example.com\n198.51.100.7\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_entente"))
        .args([
            "policy",
            "explain",
            "--partner",
            "berlin.office",
            "--tlp",
            "green",
            "--config",
        ])
        .arg(&path)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().all(|l| l.ends_with(
            "withheld: the policy for peer node berlin.office names no max_tlp (default deny)"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_for_peer_nodes_uses_the_signed_distribution() {
    let pki = Pki::new();
    let id = pki.node("redmond.hq");
    pki.client("analyst.alice");
    let path = write_config(&pki, &id, &[client("analyst.alice", "analyst")], &[]);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for peer in ["berlin.office", "lea.partner"] {
        text.push_str(&format!(
            "\n[[peer]]\nid = \"{peer}\"\naddress = \"127.0.0.1:1\"\nmax_tlp = \"AMBER\"\nallow_types = [\"*\"]\n"
        ));
    }
    text.push_str("\n[groups]\nops-cobalt = [\"berlin.office\", \"singapore.office\"]\n");
    std::fs::write(&path, text).unwrap();
    let node = common::start(&path).await;
    let analyst = connect(&pki, &node, "analyst.alice").await;
    let operator = connect(&pki, &node, "redmond.hq").await;

    let grouped = item("domain", "cobalt.example.com", Tlp::Amber, &[]);
    let grouped_id = grouped.id.clone();
    publish(&analyst, vec![grouped], vec!["ops-cobalt".into()])
        .await
        .unwrap();
    let local_only = item("domain", "local.example.com", Tlp::Green, &[]);
    let local_id = local_only.id.clone();
    let request = PublishRequest {
        items: vec![local_only],
        distribution: Some(wire::Distribution {
            max_hops: Some(0),
            recipients: vec![],
        }),
        groups: vec![],
    };
    within(
        "publish",
        analyst.publish(tokio_stream::iter(vec![request])),
    )
    .await
    .unwrap();

    let explain = |partner: &'static str, id: String| {
        let operator = &operator;
        async move {
            within("explain", operator.explain(partner, &id))
                .await
                .unwrap()
                .rule
        }
    };
    assert!(
        explain("berlin.office", grouped_id.clone())
            .await
            .starts_with("allowed:")
    );
    assert_eq!(
        explain("lea.partner", grouped_id).await,
        "withheld: lea.partner is not in the bundle's recipient list"
    );
    assert_eq!(
        explain("berlin.office", local_id).await,
        "withheld: max_hops 0 is reached (this node holds the item at hop 0)"
    );
    node.shutdown(DEADLINE).await.unwrap();
}
