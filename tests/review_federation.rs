//! Attacks on federation pulls, reloads and exports, end to end over real mTLS.
//!
//! What these tests attack:
//! - a pull page decided when it was read and sent as a slow peer reads it: whether a
//!   version superseded since (its marking raised), or an object that an id arriving
//!   since now withholds (rule 7), still leaves the node, in a bundle of its own or in
//!   a later part of a transfer under way;
//! - an `Intel.Export` page read ahead of a slow client: whether a version superseded
//!   since still leaves the node.
//!
//! A slow reader is a channel whose HTTP/2 stream window is small (1 KiB), so that
//! what the node has decided waits in the node, not in the reader's buffers.

mod common;

use std::time::Duration;

use common::Pki;
use entente::client::NodeClient;
use entente::engine::now_ms;
use entente::model::ItemId;
use entente::rpc::proto::federation_client::FederationClient;
use entente::rpc::proto::intel_client::IntelClient;
use entente::rpc::proto::{ExportRequest, PublishRequest, PullRequest, pull_response};
use entente::wire::{self, Tlp};
use entente::{Node, NodeId};
use prost::Message;

const DEADLINE: Duration = Duration::from_secs(30);
const HQ: &str = "redmond.hq";
const ANALYST: &str = "analyst.alice";
const RESEARCHER: &str = "researcher.bob";
const POLICE: &str = "cyberunit.police";

struct Hq {
    node: Node,
    pki: Pki,
    hq: NodeId,
}

impl Hq {
    /// HQ with an analyst, a GREEN researcher (domain) and the police peer node (up to
    /// AMBER, domain only).
    async fn start() -> Self {
        common::init_logging();
        let pki = Pki::new();
        let hq = pki.node(HQ);
        pki.node(POLICE);
        for who in [ANALYST, RESEARCHER] {
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
allow_types = ["domain"]

[[peer]]
id = "{POLICE}"
address = "127.0.0.1:1"
role = "peer"
max_tlp = "AMBER"
allow_types = ["domain"]
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

    /// A channel to HQ as `who` whose HTTP/2 stream window is 1 KiB: HQ can send little
    /// ahead of what the reader takes.
    async fn slow_channel(&self, who: &str) -> tonic::transport::Channel {
        let who = NodeId::new(who).unwrap();
        let tls = self.pki.material(&who).client_config().unwrap();
        let connector = tokio_rustls::TlsConnector::from(tls);
        let address = self.node.local_addr().to_string();
        let server = self.hq.to_string();
        tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .initial_stream_window_size(Some(1024))
            .initial_connection_window_size(Some(65_535))
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let connector = connector.clone();
                let address = address.clone();
                let server = server.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect(&address).await?;
                    let name = rustls::pki_types::ServerName::try_from(server)?;
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper_util::rt::TokioIo::new(
                        tls,
                    ))
                }
            }))
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.node.shutdown(DEADLINE).await.unwrap();
    }
}

fn indicator(id: &str, value: &str, tlp: Tlp, description: &str) -> wire::Item {
    wire::Item {
        id: id.to_owned(),
        modified_unix_ms: 0,
        tlp: tlp as i32,
        tags: Vec::new(),
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".to_owned(),
            value: value.to_owned(),
            description: description.to_owned(),
            ..Default::default()
        })),
    }
}

/// `n` domain indicators of marking `tlp`, with labels that compress little.
fn fillers(n: usize, tlp: Tlp) -> Vec<wire::Item> {
    (0..n)
        .map(|i| {
            let label = ItemId::new_random().as_str()[11..].replace('-', "");
            indicator(
                ItemId::new_random().as_str(),
                &format!("{label}-{i}.example"),
                tlp,
                "",
            )
        })
        .collect()
}

async fn publish(client: &NodeClient, items: Vec<wire::Item>) {
    let request = PublishRequest {
        items,
        distribution: None,
        groups: vec![],
    };
    client
        .publish(tokio_stream::iter(vec![request]))
        .await
        .expect("publish");
}

/// An id that sorts after every random one (and is published last), so that it comes
/// late in any page.
const LATE: &str = "indicator--fffffff0-0000-4000-8000-000000000001";
/// The id a late object names in its description before anything is held under it.
const NAMED: &str = "indicator--fffffff0-0000-4000-8000-000000000002";

/// HQ holds 30 AMBER bundles of 30 domains (about 150 KB, far more than the police
/// node's 1 KiB window and what the gRPC layer encodes ahead), then `last`. The police
/// node opens a pull, reads one message and stops; `meanwhile` is published; then it
/// reads the rest. Returns the ids of every item it received after that.
async fn slow_pull_around(
    hq: &Hq,
    last: Vec<wire::Item>,
    meanwhile: Vec<wire::Item>,
) -> Vec<String> {
    let alice = hq.connect(ANALYST).await;
    for _ in 0..30 {
        publish(&alice, fillers(30, Tlp::Amber)).await;
    }
    publish(&alice, last).await;
    let channel = hq.slow_channel(POLICE).await;
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
    // The first message: the page holding every bundle above has been read and decided.
    let first = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .expect("a first message");
    assert!(matches!(first.event, Some(pull_response::Event::Bundle(_))));
    publish(&alice, meanwhile).await;
    let mut ids = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, stream.message()).await {
            Ok(Ok(Some(message))) => {
                if let Some(pull_response::Event::Bundle(feed)) = message.event {
                    for d in entente::sync::parts::disclosures(&feed.part.unwrap().disclosures) {
                        let item = wire::Item::decode(d.unwrap().item_bytes.as_slice()).unwrap();
                        ids.push(item.id);
                    }
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(status)) => panic!("the pull ended with {status:?}"),
            Err(_) => panic!("the pull did not end within {DEADLINE:?}"),
        }
    }
    ids
}

/// A pull page is decided when it is read and sent as the peer reads it. An item whose
/// author raised its marking above the peer's policy (a newer version) after the page
/// was read must not reach the peer, however long the peer kept the page waiting: the
/// peer would keep, and could forward, a version its author withdrew, and learn that the
/// id is held though its latest version is withheld.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_peer_is_not_sent_a_version_superseded_after_its_page_was_read() {
    let hq = Hq::start().await;
    let mut v1 = indicator(LATE, "reclassified.example", Tlp::Amber, "");
    v1.modified_unix_ms = now_ms() - 10_000;
    let mut v2 = v1.clone();
    v2.modified_unix_ms = now_ms() - 5_000;
    v2.tlp = Tlp::Red as i32;
    let ids = slow_pull_around(&hq, vec![v1], vec![v2]).await;
    assert!(
        ids.len() >= 29 * 30,
        "the fillers arrive ({} items)",
        ids.len()
    );
    assert!(
        !ids.iter().any(|id| id == LATE),
        "the police node received the AMBER version of {LATE} after its author raised it to RED"
    );
    hq.stop().await;
}

/// Rule 7 on a page waiting for a slow peer: an object that names an id nothing was
/// held under when the page was read passes; once an item arrives under that id that
/// the peer may not see (RED), the object is withheld, and must not leave with the
/// page read before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_peer_is_not_sent_an_object_that_an_id_arrived_since_withholds() {
    let hq = Hq::start().await;
    let naming = indicator(
        LATE,
        "names-another.example",
        Tlp::Amber,
        &format!("seen with {NAMED}"),
    );
    let named = indicator(NAMED, "informant-infrastructure.example", Tlp::Red, "");
    let ids = slow_pull_around(&hq, vec![naming], vec![named]).await;
    assert!(
        ids.len() >= 29 * 30,
        "the fillers arrive ({} items)",
        ids.len()
    );
    assert!(
        !ids.iter().any(|id| id == LATE),
        "the police node received an object naming {NAMED}, which it may not see, after that id arrived"
    );
    hq.stop().await;
}

/// A bundle larger than a part (1 MiB) goes as a transfer of several parts, each waiting
/// for the peer to read. An item of a later part superseded after the transfer began
/// (its marking raised above the peer's policy) must not be sent with it: the transfer
/// stops, and the bundle is decided anew on the next pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_peer_is_not_sent_a_version_superseded_while_its_transfer_was_under_way() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let mut v1 = indicator(LATE, "reclassified.example", Tlp::Amber, "");
    v1.modified_unix_ms = now_ms() - 10_000;
    let mut v2 = v1.clone();
    v2.modified_unix_ms = now_ms() - 5_000;
    v2.tlp = Tlp::Red as i32;
    // One bundle of about 8 MiB: the indicator to be raised is its last item, so in its
    // last part.
    let mut items = fillers(40_000, Tlp::Amber);
    items.push(v1);
    publish(&alice, items).await;
    let channel = hq.slow_channel(POLICE).await;
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
    let first = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .expect("a first part");
    let Some(pull_response::Event::Bundle(feed)) = first.event else {
        panic!("a part first");
    };
    assert!(!feed.part.unwrap().last, "the bundle goes in several parts");
    publish(&alice, vec![v2]).await;
    let mut ids = Vec::new();
    let mut parts = 1;
    let end = loop {
        match tokio::time::timeout(DEADLINE, stream.message()).await {
            Ok(Ok(Some(message))) => {
                if let Some(pull_response::Event::Bundle(feed)) = message.event {
                    parts += 1;
                    for d in entente::sync::parts::disclosures(&feed.part.unwrap().disclosures) {
                        let item = wire::Item::decode(d.unwrap().item_bytes.as_slice()).unwrap();
                        ids.push(item.id);
                    }
                }
            }
            Ok(Ok(None)) => break "ended".to_owned(),
            Ok(Err(status)) => break format!("{:?}", status.code()),
            Err(_) => panic!("the pull did not end within {DEADLINE:?}"),
        }
    };
    assert!(
        !ids.iter().any(|id| id == LATE),
        "the police node received the AMBER version of {LATE} after its author raised it to RED ({parts} parts, then {end})"
    );
    assert_eq!(end, "Aborted", "the transfer stops ({parts} parts)");
    hq.stop().await;
}

/// `Intel.Export` reads a page of up to 1,000 items and streams it as the client reads.
/// A version superseded while it waited (its marking raised above the client's policy)
/// must not be sent: `Get` and `Query` then answer the id as not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_export_is_not_sent_a_version_superseded_after_its_page_was_read() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let mut v1 = indicator(LATE, "reclassified.example", Tlp::Green, "");
    v1.modified_unix_ms = now_ms() - 10_000;
    let mut v2 = v1.clone();
    v2.modified_unix_ms = now_ms() - 5_000;
    v2.tlp = Tlp::Amber as i32;
    publish(&alice, fillers(400, Tlp::Green)).await;
    publish(&alice, vec![v1]).await;
    let channel = hq.slow_channel(RESEARCHER).await;
    let mut stream = IntelClient::new(channel)
        .export(ExportRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(DEADLINE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .expect("a first chunk");
    publish(&alice, vec![v2]).await;
    let researcher = hq.connect(RESEARCHER).await;
    assert!(
        researcher.get(LATE).await.unwrap().is_none(),
        "Get answers the reclassified id as not held"
    );
    let late_uuid = &LATE["indicator--".len()..];
    let mut chunks = 1usize;
    let mut late = 0usize;
    loop {
        match tokio::time::timeout(DEADLINE, stream.message()).await {
            Ok(Ok(Some(chunk))) => {
                chunks += 1;
                late += usize::from(chunk.stix_json.contains(late_uuid));
            }
            Ok(Ok(None)) => break,
            Ok(Err(status)) => panic!("the export ended with {status:?}"),
            Err(_) => panic!("the export did not end within {DEADLINE:?}"),
        }
    }
    assert!(chunks >= 400, "the fillers arrive ({chunks} chunks)");
    assert_eq!(
        late, 0,
        "the researcher exported the GREEN version of {LATE} after its author raised it to AMBER"
    );
    hq.stop().await;
}
