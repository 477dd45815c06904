//! Attacks found in review, end to end over real mTLS. Each test states the property
//! it checks.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Pki;
use entente::client::NodeClient;
use entente::engine::now_ms;
use entente::model::ItemId;
use entente::rpc::proto::federation_client::FederationClient;
use entente::rpc::proto::{ItemFilter, PublishRequest, PullRequest, pull_response};
use entente::wire::{self, Tlp};
use entente::{Node, NodeId};
use prost::Message;

const DEADLINE: Duration = Duration::from_secs(30);
const HQ: &str = "redmond.hq";
const ANALYST: &str = "analyst.alice";
const RESEARCHER: &str = "researcher.bob";
const BERLIN: &str = "berlin.office";
const POLICE: &str = "cyberunit.police";
/// A peer that takes every type but e-mail addresses and IPv4 addresses.
const TIPS: &str = "tips.partner";

struct Hq {
    node: Node,
    pki: Pki,
    hq: NodeId,
}

impl Hq {
    /// HQ with an analyst, a GREEN researcher (domain, ipv4; deny pii), and two peer
    /// nodes: berlin (up to AMBER, every type) and police (up to AMBER, domain only).
    async fn start() -> Self {
        common::init_logging();
        let pki = Pki::new();
        let hq = pki.node(HQ);
        pki.node(BERLIN);
        pki.node(POLICE);
        pki.node(TIPS);
        for who in [ANALYST, RESEARCHER, "analyst.narrow", "researcher.no-pii"] {
            pki.client(who);
        }
        let mut text = common::node_section(&pki, &hq, &pki.path().join("data-hq"));
        text.push_str(&format!(
            r#"
[[client]]
id = "{ANALYST}"
role = "analyst"

[[client]]
id = "{RESEARCHER}"
role = "read_only"
allow_types = ["domain", "ipv4"]
deny_tags = ["pii"]

[[client]]
id = "analyst.narrow"
role = "analyst"
max_tlp = "GREEN"

[[peer]]
id = "{BERLIN}"
address = "127.0.0.1:1"
role = "peer"
max_tlp = "AMBER"
allow_types = ["*"]

[[peer]]
id = "{POLICE}"
address = "127.0.0.1:1"
role = "peer"
max_tlp = "AMBER"
allow_types = ["domain"]
deny_tags = ["pii"]

[[peer]]
id = "{TIPS}"
address = "127.0.0.1:1"
role = "peer"
max_tlp = "AMBER"
allow_types = ["*"]
deny_types = ["email", "ipv4"]

[[client]]
id = "researcher.no-pii"
role = "read_only"
allow_types = ["*"]
deny_types = ["email", "ipv4"]
"#
        ));
        let path = pki.path().join("hq.toml");
        std::fs::write(&path, text).unwrap();
        let node = common::start(&path).await;
        Self { node, pki, hq }
    }

    async fn connect(&self, who: &str) -> NodeClient {
        common::connect(&self.pki, &self.node, who).await
    }

    /// Every item (decoded) that peer `who` receives in a full pull from cursor 0.
    async fn pull_all(&self, who: &str) -> Vec<wire::Item> {
        let who = NodeId::new(who).unwrap();
        let channel = entente::transport::connect(
            self.pki.material(&who).client_config().unwrap(),
            &self.node.local_addr().to_string(),
            &self.hq,
        )
        .await
        .unwrap();
        let mut stream = FederationClient::new(channel)
            .pull(PullRequest {
                cursor: Vec::new(),
                follow: false,
                protocol_version: entente::rpc::PROTOCOL_VERSION,
                resume: None,
            })
            .await
            .unwrap()
            .into_inner();
        let mut items = Vec::new();
        while let Some(message) = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .unwrap()
            .unwrap()
        {
            if let Some(pull_response::Event::Bundle(feed)) = message.event {
                for d in entente::sync::parts::disclosures(&feed.part.unwrap().disclosures) {
                    items.push(wire::Item::decode(d.unwrap().item_bytes.as_slice()).unwrap());
                }
            }
        }
        items
    }

    async fn stop(self) {
        self.node.shutdown(DEADLINE).await.unwrap();
    }
}

fn indicator(ty: &str, value: &str, tlp: Tlp, tags: &[&str]) -> wire::Item {
    wire::Item {
        id: ItemId::new_random().to_string(),
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

fn revocation_of(of: &wire::Item, ty: &str) -> wire::Item {
    wire::Item {
        id: of.id.clone(),
        modified_unix_ms: now_ms() + 1,
        tlp: of.tlp,
        tags: of.tags.clone(),
        kind: Some(wire::item::Kind::Revocation(wire::Revocation {
            reason: "false positive: the source in case 4711 was wrong".into(),
            indicator_type: ty.to_owned(),
            indicator: None,
        })),
    }
}

async fn publish(
    client: &NodeClient,
    items: Vec<wire::Item>,
    distribution: Option<wire::Distribution>,
) {
    let request = PublishRequest {
        items,
        distribution,
        groups: vec![],
    };
    client
        .publish(tokio_stream::iter(vec![request]))
        .await
        .expect("publish");
}

/// The recipient list (and max_hops) of the indicator's bundle must also hold for its
/// revocation: a node that was never allowed the indicator must not learn its id,
/// type, tags and the revocation reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_does_not_escape_its_indicators_recipient_list() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;

    // AMBER domain for berlin alone (signed recipient list).
    let secret = indicator(
        "domain",
        "undercover-c2.example",
        Tlp::Amber,
        &["op:nightjar"],
    );
    publish(
        &alice,
        vec![secret.clone()],
        Some(wire::Distribution {
            max_hops: None,
            recipients: vec![BERLIN.into()],
        }),
    )
    .await;
    let police_before = hq.pull_all(POLICE).await;
    assert!(
        police_before.iter().all(|i| i.id != secret.id),
        "police received the recipient-restricted indicator itself"
    );

    // The analyst revokes it (same marking, type and tags, as publish requires) without
    // repeating the recipient list.
    publish(&alice, vec![revocation_of(&secret, "domain")], None).await;

    let police = hq.pull_all(POLICE).await;
    let leaked: Vec<&wire::Item> = police.iter().filter(|i| i.id == secret.id).collect();
    assert!(
        leaked.is_empty(),
        "police (not a recipient) received the revocation of a recipient-restricted item: {leaked:?}"
    );
    hq.stop().await;
}

/// A new version of an indicator published for named recipients, written again without
/// naming them (an analyst re-publishing the same list, or changing `valid_until`), goes
/// no further than the version it replaces went: naming recipients is the only way to
/// change who may hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_published_without_recipients_keeps_the_recipients_it_had() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let to_berlin = || {
        Some(wire::Distribution {
            max_hops: None,
            recipients: vec![BERLIN.into()],
        })
    };
    let mut secret = indicator("domain", "undercover-c2.example", Tlp::Amber, &[]);
    secret.modified_unix_ms = now_ms() - 60_000;
    publish(&alice, vec![secret.clone()], to_berlin()).await;
    let mut again = secret.clone();
    again.modified_unix_ms = now_ms() - 30_000;
    if let Some(wire::item::Kind::Indicator(i)) = &mut again.kind {
        i.value = "undercover-c2-new.example".into();
    }
    publish(&alice, vec![again.clone()], None).await;

    let police = hq.pull_all(POLICE).await;
    let leaked: Vec<&wire::Item> = police.iter().filter(|i| i.id == secret.id).collect();
    assert!(
        leaked.is_empty(),
        "police (not a recipient) received a new version of a recipient-restricted item: {leaked:?}"
    );
    let berlin = hq.pull_all(BERLIN).await;
    assert!(
        berlin
            .iter()
            .any(|i| i.id == again.id && i.modified_unix_ms == again.modified_unix_ms),
        "berlin (the recipient) did not receive the new version"
    );

    // Beside an item for everyone in one bundle it is refused, not widened or narrowing
    // the other: the writer is told to write it alone.
    let mut third = again.clone();
    third.modified_unix_ms = now_ms() - 10_000;
    let other = indicator("domain", "everyone.example", Tlp::Green, &[]);
    let refused = alice
        .publish(tokio_stream::iter(vec![PublishRequest {
            items: vec![third, other],
            distribution: None,
            groups: vec![],
        }]))
        .await
        .expect_err("a bundle mixing distributions was signed");
    assert!(refused.to_string().contains("write it alone"), "{refused}");

    // Naming recipients is the writer's explicit choice, and is honoured.
    let mut widened = again.clone();
    widened.modified_unix_ms = now_ms() - 5_000;
    publish(
        &alice,
        vec![widened.clone()],
        Some(wire::Distribution {
            max_hops: None,
            recipients: vec![BERLIN.into(), POLICE.into()],
        }),
    )
    .await;
    let police = hq.pull_all(POLICE).await;
    assert!(
        police
            .iter()
            .any(|i| i.id == widened.id && i.modified_unix_ms == widened.modified_unix_ms),
        "police, now named, did not receive the version published for it"
    );
    hq.stop().await;
}

/// `deny_tags = ["pii"]` must withhold an item tagged `PII`: a deny list that a change of
/// case defeats fails open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_tags_are_not_defeated_by_case() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let bob = hq.connect(RESEARCHER).await;
    publish(
        &alice,
        vec![
            indicator("domain", "victim-home-a.example", Tlp::Green, &["PII"]),
            indicator("domain", "victim-home-b.example", Tlp::Green, &["Pii"]),
        ],
        None,
    )
    .await;
    let page = bob.query(ItemFilter::default(), 100, vec![]).await.unwrap();
    let values: Vec<String> = page
        .items
        .iter()
        .filter_map(|s| match &s.item.as_ref()?.kind {
            Some(wire::item::Kind::Indicator(i)) => Some(i.value.clone()),
            _ => None,
        })
        .collect();
    let police: Vec<String> = hq
        .pull_all(POLICE)
        .await
        .into_iter()
        .map(|i| format!("{:?}", i.tags))
        .collect();
    assert!(
        values.is_empty() && police.is_empty(),
        "items tagged PII/Pii passed deny_tags [\"pii\"]: researcher got {values:?}, police got tags {police:?}"
    );
    hq.stop().await;
}

/// An exact-value query must answer the same (items, page token, number of pages)
/// whether or not the node holds withheld items with that value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_items_with_the_queried_value_do_not_change_the_paging() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let bob = hq.connect(RESEARCHER).await;

    // Two values, each with one GREEN item the researcher may see. For "busy", 1,100
    // older AMBER items with the same value are held too; for "quiet", none.
    for value in ["busy.example", "quiet.example"] {
        if value == "busy.example" {
            for _ in 0..2 {
                let items = (0..550)
                    .map(|_| indicator("domain", value, Tlp::Amber, &[]))
                    .collect();
                publish(&alice, items, None).await;
            }
        }
        publish(
            &alice,
            vec![indicator("domain", value, Tlp::Green, &[])],
            None,
        )
        .await;
    }

    let mut shapes = Vec::new();
    for value in ["busy.example", "quiet.example"] {
        let filter = ItemFilter {
            value: value.into(),
            ..Default::default()
        };
        let mut pages = Vec::new();
        let mut token = Vec::new();
        loop {
            let page = bob.query(filter.clone(), 1000, token).await.unwrap();
            pages.push((page.items.len(), !page.next_page_token.is_empty()));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        shapes.push(pages);
    }
    assert_eq!(
        shapes[0], shapes[1],
        "paging differs for a value with withheld AMBER items (left) and one without (right): (items, token) per page"
    );
    hq.stop().await;
}

/// GetCertificates answers a peer for this node's own certificate, and for other
/// origins' certificates only when that peer may be sent other origins' bundles; so a
/// peer without `forward_third_party` cannot probe which origins this node accepted
/// data from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_certificates_does_not_tell_which_origins_were_accepted() {
    let hq = Hq::start().await;
    let police = NodeId::new(POLICE).unwrap();
    let channel = entente::transport::connect(
        hq.pki.material(&police).client_config().unwrap(),
        &hq.node.local_addr().to_string(),
        &hq.hq,
    )
    .await
    .unwrap();
    // Berlin's certificate is cached, as after a bundle of berlin's verified.
    let berlin = hq
        .pki
        .material(&NodeId::new(BERLIN).unwrap())
        .certificate_der()
        .to_vec();
    hq.node.engine().store().put_certificate(&berlin).unwrap();
    let hq_id = NodeId::new(HQ).unwrap();
    let own = entente::crypto::sha256(hq.pki.material(&hq_id).certificate_der());
    let cached = entente::crypto::sha256(&berlin);
    let answer = FederationClient::new(channel)
        .get_certificates(entente::rpc::proto::GetCertificatesRequest {
            sha256: vec![own.to_vec(), cached.to_vec(), vec![0u8; 32]],
        })
        .await
        .unwrap()
        .into_inner();
    let found: BTreeSet<Vec<u8>> = answer.chains.into_iter().map(|c| c.sha256).collect();
    assert_eq!(found, BTreeSet::from([own.to_vec()]));
    hq.stop().await;
}

/// Revoking a peer's certificate with a CRL and a reload must also stop this node from
/// taking data through its own pull link to that peer (the README: revoking no longer
/// needs a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_revoked_by_a_reloaded_crl_is_no_longer_pulled_from() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node(HQ);
    let berlin = pki.node(BERLIN);
    let singapore = pki.node("singapore.office");
    let node_text = |id: &NodeId, body: String, crls: &[std::path::PathBuf]| {
        let mut text = common::node_section(&pki, id, &pki.path().join(format!("data-{id}")));
        if !crls.is_empty() {
            text = text.replace("crls = []", &format!("crls = [\"{}\"]", crls[0].display()));
        }
        text.push_str(&body);
        let path = pki.path().join(format!("{id}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    // singapore → berlin → hq, GREEN passed on by berlin.
    let sg_node = common::start(&node_text(
        &singapore,
        format!(
            "\n[[peer]]\nid = \"{BERLIN}\"\naddress = \"127.0.0.1:1\"\nmax_tlp = \"GREEN\"\nallow_types = [\"*\"]\n"
        ),
        &[],
    ))
    .await;
    let berlin_node = common::start(&node_text(
        &berlin,
        format!(
            "\n[[peer]]\nid = \"singapore.office\"\naddress = \"{}\"\n\n[[peer]]\nid = \"{HQ}\"\naddress = \"127.0.0.1:1\"\nmax_tlp = \"GREEN\"\nallow_types = [\"*\"]\nforward_third_party = true\n",
            sg_node.local_addr()
        ),
        &[],
    ))
    .await;
    let hq_body = format!(
        "\n[[peer]]\nid = \"{BERLIN}\"\naddress = \"{}\"\n",
        berlin_node.local_addr()
    );
    let hq_config = node_text(&hq, hq_body.clone(), &[]);
    let hq_node = common::start(&hq_config).await;

    let connect = |node: &Node, id: &NodeId| {
        let tls = pki.material(id).client_config().unwrap();
        let addr = node.local_addr().to_string();
        let id = id.clone();
        async move { NodeClient::connect(tls, &id, &addr, &id).await.unwrap() }
    };
    let sg_client = connect(&sg_node, &singapore).await;
    let hq_client = connect(&hq_node, &hq).await;
    let holds = |value: &'static str| {
        let hq_client = hq_client.clone_channel();
        async move {
            let filter = ItemFilter {
                value: value.into(),
                ..Default::default()
            };
            !hq_client
                .query(filter, 10, vec![])
                .await
                .unwrap()
                .items
                .is_empty()
        }
    };
    publish(
        &sg_client,
        vec![indicator(
            "domain",
            "before-revocation.example",
            Tlp::Green,
            &[],
        )],
        None,
    )
    .await;
    let start = std::time::Instant::now();
    while !holds("before-revocation.example").await {
        assert!(
            start.elapsed() < DEADLINE,
            "hq never received the first item"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The CA revokes berlin; hq installs the CRL and reloads (no restart).
    let crl = pki.certs.revoke(&berlin).unwrap();
    node_text(&hq, hq_body, &[crl]);
    hq_node.reload_policy().expect("reload");

    publish(
        &sg_client,
        vec![indicator(
            "domain",
            "after-revocation.example",
            Tlp::Green,
            &[],
        )],
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let links = hq_client.links().await.unwrap();
    assert!(
        !holds("after-revocation.example").await,
        "hq still pulls from and accepts data through berlin after revoking its certificate: {:?}",
        links.links
    );
    for n in [hq_node, berlin_node, sg_node] {
        n.shutdown(DEADLINE).await.unwrap();
    }
}

/// After a reload that narrows a peer's policy, a follow stream must not go on sending
/// what was decided under the old policy, however slowly the peer reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowing_reload_stops_what_a_slow_puller_has_not_read_yet() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let police = NodeId::new(POLICE).unwrap();
    let channel = entente::transport::connect(
        hq.pki.material(&police).client_config().unwrap(),
        &hq.node.local_addr().to_string(),
        &hq.hq,
    )
    .await
    .unwrap();
    let mut stream = FederationClient::new(channel)
        .pull(PullRequest {
            cursor: Vec::new(),
            follow: true,
            protocol_version: entente::rpc::PROTOCOL_VERSION,
            resume: None,
        })
        .await
        .unwrap()
        .into_inner();
    // The police node stops reading; HQ publishes 80 bundles of 1,000 AMBER domains
    // (random labels, so they compress little: far more than the 2 MiB HTTP/2 stream
    // window a client lets in before it reads).
    for b in 0..80 {
        let items = (0..1000)
            .map(|i| {
                indicator(
                    "domain",
                    &format!(
                        "{}-{b}-{i}.example",
                        ItemId::new_random().as_str()[11..].replace('-', "")
                    ),
                    Tlp::Amber,
                    &[],
                )
            })
            .collect();
        publish(&alice, items, None).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The operator narrows the police policy to GREEN and reloads.
    let path = hq.pki.path().join("hq.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let narrowed = text.replacen(
        "max_tlp = \"AMBER\"\nallow_types = [\"domain\"]",
        "max_tlp = \"GREEN\"\nallow_types = [\"domain\"]",
        1,
    );
    assert_ne!(text, narrowed);
    std::fs::write(&path, narrowed).unwrap();
    hq.node.reload_policy().expect("reload");
    let mut amber_after_reload = 0usize;
    let mut bytes = 0usize;
    let mut bundles = 0usize;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
            Ok(Ok(Some(message))) => {
                if let Some(pull_response::Event::Bundle(feed)) = message.event {
                    let part = feed.part.unwrap();
                    bytes += part.encoded_len();
                    if part.index == 0 {
                        bundles += 1;
                    }
                    amber_after_reload +=
                        entente::sync::parts::disclosures(&part.disclosures).count();
                }
            }
            Ok(Ok(None)) => break "ended".to_owned(),
            Ok(Err(status)) => break format!("{:?}", status.code()),
            Err(_) => break "still open".to_owned(),
        }
    };
    // What had left the node before the reload cannot be recalled: at most what the
    // puller's HTTP/2 windows let in (2 MiB for the stream by default) before it read.
    // Nothing decided under the old policy leaves after the reload: the stream ends
    // ABORTED at the first such bundle, and the next pull replays under the new policy.
    assert!(
        bytes <= 3 << 20 && bundles < 20,
        "the police node read {amber_after_reload} AMBER items ({bundles} bundles, {bytes} bytes before compression) after its policy was narrowed to GREEN"
    );
    assert_eq!(
        end, "Aborted",
        "the stream must end when its policy changed"
    );
    hq.stop().await;
}

/// A writer whose own policy is narrowed (GREEN) must not learn, from the refusal of a
/// revocation it offers, anything about an item it may not see: not whether it is held,
/// nor its marking, tags or origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_revocation_says_nothing_about_an_item_the_writer_may_not_see() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let narrow = hq.connect("analyst.narrow").await;
    // v1 GREEN, seen by the narrow analyst; v2 reclassified RED with a sensitive tag.
    let mut item = indicator("domain", "reclassified.example", Tlp::Green, &[]);
    item.modified_unix_ms = now_ms() - 10_000;
    publish(&alice, vec![item.clone()], None).await;
    assert!(narrow.get(&item.id).await.unwrap().is_some());
    let mut v2 = item.clone();
    v2.modified_unix_ms = now_ms() - 5_000;
    v2.tlp = Tlp::Red as i32;
    v2.tags = vec!["source:informant".into()];
    publish(&alice, vec![v2], None).await;
    assert!(
        narrow.get(&item.id).await.unwrap().is_none(),
        "v2 is withheld from it"
    );

    let absent = indicator("domain", "never-published.example", Tlp::Green, &[]);
    let mut answers = Vec::new();
    for target in [&item, &absent] {
        let request = PublishRequest {
            items: vec![revocation_of(target, "domain")],
            distribution: None,
            groups: vec![],
        };
        let answer = narrow.publish(tokio_stream::iter(vec![request])).await;
        answers.push(format!("{answer:?}").replace(&target.id, "ID"));
    }
    assert_eq!(
        answers[0], answers[1],
        "a withheld item and an absent one answer differently"
    );
    hq.stop().await;
}

/// One version of one object given twice with different markings is not passed over as
/// a duplicate: in one request it is refused whole (nothing is stored), and against a
/// held version it is refused by name, so the writer learns its RED copy was not taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_version_given_twice_with_two_markings_is_refused_not_passed_over() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let mut green = indicator("domain", "twomarkings.example", Tlp::Green, &[]);
    green.modified_unix_ms = now_ms() - 10_000;
    let mut red = green.clone();
    red.tlp = Tlp::Red as i32;

    let request = PublishRequest {
        items: vec![green.clone(), red.clone()],
        distribution: None,
        groups: vec![],
    };
    let answer = alice.publish(tokio_stream::iter(vec![request])).await;
    let refusal = format!("{answer:?}");
    assert!(
        refusal.contains("given twice at the same version"),
        "{refusal}"
    );
    assert!(
        alice.get(&green.id).await.unwrap().is_none(),
        "nothing of the request is stored"
    );

    // GREEN held; the same version as RED is refused, not counted as a duplicate.
    publish(&alice, vec![green.clone()], None).await;
    let request = PublishRequest {
        items: vec![red],
        distribution: None,
        groups: vec![],
    };
    let answer = alice
        .publish(tokio_stream::iter(vec![request]))
        .await
        .unwrap();
    assert_eq!(
        (answer.items_rejected, answer.items_duplicate),
        (1, 0),
        "{answer:?}"
    );
    assert!(answer.rejected[0].reason.contains("held"), "{answer:?}");
    // The very same version again is a duplicate, as before.
    let request = PublishRequest {
        items: vec![green],
        distribution: None,
        groups: vec![],
    };
    let answer = alice
        .publish(tokio_stream::iter(vec![request]))
        .await
        .unwrap();
    assert_eq!((answer.items_rejected, answer.items_duplicate), (0, 1));
    hq.stop().await;
}

/// A writer of this node that gives an older version than the one held (its clock
/// behind the first writer's, within the allowed skew) meant a change: raising the
/// marking to RED is refused with both versions named (the writer knows the item stays
/// GREEN), not passed over as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_older_than_the_held_version_is_refused_not_passed_over() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let mut green = indicator("domain", "raised.example", Tlp::Green, &[]);
    // Dated four minutes ahead: a colleague's clock running fast, within the skew.
    green.modified_unix_ms = now_ms() + 4 * 60_000;
    publish(&alice, vec![green.clone()], None).await;
    let mut red = green.clone();
    red.modified_unix_ms = 0;
    red.tlp = Tlp::Red as i32;
    let request = PublishRequest {
        items: vec![red],
        distribution: None,
        groups: vec![],
    };
    let answer = alice.publish(tokio_stream::iter(vec![request])).await;
    let refusal = format!("{answer:?}");
    assert!(
        refusal.contains("a newer version of") && refusal.contains("is held"),
        "{refusal}"
    );
    let held = alice.get(&green.id).await.unwrap().unwrap();
    assert_eq!(held.item.unwrap().tlp, Tlp::Green as i32);
    hq.stop().await;
}

/// A revocation cannot wait for the clock: `entente revoke` (a revocation giving only
/// the id and the reason) of an indicator whose version held is dated ahead of this
/// node's clock, within the skew, is dated just after that version, not refused as
/// older than it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_of_a_version_dated_ahead_is_dated_after_it() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let mut ahead = indicator("domain", "fast-clock.example", Tlp::Green, &["op:x"]);
    ahead.modified_unix_ms = now_ms() + 4 * 60_000;
    publish(&alice, vec![ahead.clone()], None).await;
    let bare = wire::Item {
        id: ahead.id.clone(),
        modified_unix_ms: 0,
        tlp: Tlp::Unspecified as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Revocation(wire::Revocation {
            reason: "false positive".into(),
            indicator_type: String::new(),
            indicator: None,
        })),
    };
    let request = PublishRequest {
        items: vec![bare],
        distribution: None,
        groups: vec![],
    };
    let answer = alice
        .publish(tokio_stream::iter(vec![request]))
        .await
        .expect("the revocation is accepted");
    assert_eq!(answer.items_accepted, 1, "{answer:?}");
    let held = alice.get(&ahead.id).await.unwrap().unwrap().item.unwrap();
    assert!(
        matches!(held.kind, Some(wire::item::Kind::Revocation(_))),
        "the indicator is not revoked: {held:?}"
    );
    assert_eq!(held.modified_unix_ms, ahead.modified_unix_ms + 1);
    assert_eq!(held.tags, vec!["op:x".to_owned()]);
    hq.stop().await;
}

/// A partner that takes every type but some is judged on what a pattern is about in
/// any form STIX gives it: `==`, spaces around the colon, a quoted property, `IN`,
/// `LIKE`, `MATCHES`, `!=`, a reference to an address (`email-message:from_ref`), a
/// comment. None of them reaches a partner denied the type, by pull or by query; a
/// pattern about other types does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_type_is_denied_in_every_form_a_pattern_gives_it() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let pattern = |value: &str| indicator("stix-pattern", value, Tlp::Green, &[]);
    let denied = [
        "[email-addr:value == 'x@y.example']",
        "[email-addr : value = 'x@y.example']",
        "[email-addr:'value' = 'x@y.example']",
        "[email-addr:value IN ('x@y.example')]",
        "[email-addr:value LIKE '%@y.example']",
        "[email-addr:value MATCHES '^x@']",
        "[email-addr:value != 'x@y.example']",
        "[email-message:from_ref.value = 'x@y.example']",
        "[email-message:to_refs[*].value = 'x@y.example' AND email-message:subject = 'hi']",
        "[domain-name:value = 'a.example' OR email-addr:value == 'x@y.example']",
        "[ipv4-addr:value == '198.51.100.7']",
        "[ipv4-addr:value IN ('198.51.100.7', '198.51.100.8')]",
        "[network-traffic:dst_ref.value = '198.51.100.7']",
        "[domain-name:resolves_to_refs[*].value = '198.51.100.7']",
        "[ipv4-addr:value = /* a comment */ '198.51.100.7' OR domain-name:value = 'b.example']",
        // A value of the denied type on a path of another object.
        "[email-message:additional_header_fields.'Reply-To' = 'ceo@corp.example']",
        "[x-lea-target:address = '198.51.100.7']",
        "[ipv6-addr:value IN ('2001:db8::9', 'ceo@corp.example')]",
        "[ipv6-addr:value != '::ffff:198.51.100.7']",
        // Free text, hex and numbers on custom paths: what they hold cannot be judged.
        "[email-message:additional_header_fields.'Reply-To' LIKE '%ceo@corp.example%']",
        "[process:command_line LIKE '%198.51.100.7%']",
        "[file:name = 'dropper.exe']",
        "[x-lea-target:address = 3325256711]",
        "[x-lea-target:blob = h'c6336407']",
    ];
    let allowed = [
        "[domain-name:value == 'c.example' OR url:value IN ('http://c.example/x')]",
        "[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e' AND file:size > 1024]",
    ];
    let items: Vec<wire::Item> = denied.iter().chain(&allowed).map(|p| pattern(p)).collect();
    publish(&alice, items.clone(), None).await;
    let id_of = |p: &str| {
        items[denied.iter().chain(&allowed).position(|q| q == &p).unwrap()]
            .id
            .clone()
    };

    let pulled: BTreeSet<String> = hq.pull_all(TIPS).await.into_iter().map(|i| i.id).collect();
    let researcher = hq.connect("researcher.no-pii").await;
    let page = researcher
        .query(ItemFilter::default(), 1000, vec![])
        .await
        .unwrap();
    let queried: BTreeSet<String> = page
        .items
        .iter()
        .filter_map(|s| s.item.as_ref().map(|i| i.id.clone()))
        .collect();
    for p in denied {
        assert!(
            !pulled.contains(&id_of(p)),
            "pulled by a peer denied its type: {p}"
        );
        assert!(
            !queried.contains(&id_of(p)),
            "queried by a client denied its type: {p}"
        );
        assert!(
            researcher.get(&id_of(p)).await.unwrap().is_none(),
            "read by a client denied its type: {p}"
        );
    }
    for p in allowed {
        assert!(pulled.contains(&id_of(p)), "not pulled: {p}");
        assert!(queried.contains(&id_of(p)), "not queried: {p}");
    }
    hq.stop().await;
}

/// A context object is withdrawn by a version with `revoked: true`. Like an indicator's
/// revocation, that version must carry the object's marking and tags: a CLEAR withdrawal
/// of an AMBER malware (a tool's default marking) would hand its description to every
/// reader of CLEAR. With the object's marking it is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_context_object_keeps_its_marking_and_tags() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let id = format!("malware--{}", uuid::Uuid::new_v4());
    let malware = |tlp: Tlp, tags: &[&str], modified: i64, revoked: bool| {
        let mut properties = serde_json::json!({
            "name": "Nightjar",
            "is_family": true,
            "description": "AMBER case detail",
        });
        if revoked {
            properties["revoked"] = serde_json::json!(true);
        }
        wire::Item {
            id: id.clone(),
            modified_unix_ms: modified,
            tlp: tlp as i32,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            kind: Some(wire::item::Kind::Context(wire::ContextObject {
                object_type: "malware".into(),
                refs: vec![],
                stix_properties: properties.to_string(),
            })),
        }
    };
    let t = now_ms() - 60_000;
    publish(&alice, vec![malware(Tlp::Amber, &["op:x"], t, false)], None).await;
    for (n, lowered) in [
        malware(Tlp::Clear, &["op:x"], t + 1_000, true),
        malware(Tlp::Amber, &[], t + 1_000, true),
    ]
    .into_iter()
    .enumerate()
    {
        let request = PublishRequest {
            items: vec![lowered],
            distribution: None,
            groups: vec![],
        };
        let refusal = format!(
            "{:?}",
            alice.publish(tokio_stream::iter(vec![request])).await
        );
        assert!(
            refusal.contains("must carry its marking, type and tags"),
            "withdrawal {n}: {refusal}"
        );
    }
    let held = alice.get(&id).await.unwrap().unwrap().item.unwrap();
    assert_eq!(held.tlp, Tlp::Amber as i32);
    // Withdrawn with its own marking and tags: taken.
    publish(
        &alice,
        vec![malware(Tlp::Amber, &["op:x"], t + 2_000, true)],
        None,
    )
    .await;
    let held = alice.get(&id).await.unwrap().unwrap().item.unwrap();
    assert_eq!(held.modified_unix_ms, t + 2_000);
    // An ordinary new version may still lower the marking (a declassification).
    publish(
        &alice,
        vec![malware(Tlp::Green, &["op:x"], t + 3_000, false)],
        None,
    )
    .await;
    hq.stop().await;
}

/// A writer that may not see an older version of an item cannot test guesses at it:
/// writing that version back gets the same refusal whether the guess matches or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guess_at_a_withheld_older_version_is_answered_as_any_other() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let narrow = hq.connect("analyst.narrow").await;
    let t1 = now_ms() - 60_000;
    let mut v1 = indicator("ipv4", "203.0.113.66", Tlp::Amber, &[]);
    v1.modified_unix_ms = t1;
    publish(&alice, vec![v1.clone()], None).await;
    let mut v2 = indicator("ipv4", "198.51.100.1", Tlp::Green, &[]);
    v2.id = v1.id.clone();
    v2.modified_unix_ms = t1 + 30_000;
    publish(&alice, vec![v2], None).await;
    assert!(narrow.get(&v1.id).await.unwrap().is_some(), "v2 is visible");

    let mut answers = Vec::new();
    for guess in ["203.0.113.66", "203.0.113.67"] {
        let mut again = v1.clone();
        if let Some(wire::item::Kind::Indicator(i)) = again.kind.as_mut() {
            i.value = guess.into();
        }
        let request = PublishRequest {
            items: vec![again],
            distribution: None,
            groups: vec![],
        };
        let answer = narrow.publish(tokio_stream::iter(vec![request])).await;
        answers.push(format!("{answer:?}").replace(guess, "GUESS"));
    }
    assert_eq!(
        answers[0], answers[1],
        "a matching guess is answered differently"
    );
    hq.stop().await;
}
