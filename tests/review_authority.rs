//! Attacks on authority in force now and on withheld-versus-absent, again, each against
//! a real node over mTLS, as a GREEN read-only researcher and an analyst:
//!
//! - a subscription handed out a version of an item that a newer version held beside it
//!   had superseded (two versions of one id in one bundle, or a newer version stored
//!   while the older one waited in the subscriber's queue): rule 6 gives clients the
//!   latest version only, and a superseded version told the subscriber that an id is
//!   held whose latest version is withheld from it.

mod common;

use std::time::Duration;

use common::Pki;
use entente::client::{ClientError, NodeClient};
use entente::engine::now_ms;
use entente::model::ItemId;
use entente::rpc::proto::{ItemFilter, PublishRequest, StoredItem};
use entente::wire::{self, Tlp};
use entente::Node;

const DEADLINE: Duration = Duration::from_secs(30);

const HQ: &str = "redmond.hq";
const ANALYST: &str = "analyst.alice";
const RESEARCHER: &str = "researcher.bob";

/// A node with an analyst that sees everything and a GREEN researcher allowed domains
/// and IPv4 addresses.
struct Hq {
    node: Node,
    pki: Pki,
}

impl Hq {
    async fn start() -> Self {
        common::init_logging();
        let pki = Pki::new();
        let id = pki.node(HQ);
        for who in [ANALYST, RESEARCHER] {
            pki.client(who);
        }
        let mut text = common::node_section(&pki, &id, &pki.path().join("data-hq"));
        text.push_str(&format!(
            r#"
[[client]]
id = "{ANALYST}"
role = "analyst"

[[client]]
id = "{RESEARCHER}"
role = "read_only"
allow_types = ["domain", "ipv4"]
"#
        ));
        let path = pki.path().join("hq.toml");
        std::fs::write(&path, text).unwrap();
        let node = common::start(&path).await;
        Self { node, pki }
    }

    async fn connect(&self, who: &str) -> NodeClient {
        common::connect(&self.pki, &self.node, who).await
    }

    async fn stop(self) {
        self.node.shutdown(DEADLINE).await.unwrap();
    }
}

fn indicator(id: &str, value: &str, tlp: Tlp, modified_ms: i64) -> wire::Item {
    wire::Item {
        id: id.to_owned(),
        modified_unix_ms: modified_ms,
        tlp: tlp as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".to_owned(),
            value: value.to_owned(),
            ..Default::default()
        })),
    }
}

async fn publish(client: &NodeClient, items: Vec<wire::Item>) -> Result<(), ClientError> {
    let request = PublishRequest {
        items,
        distribution: None,
        groups: vec![],
    };
    client
        .publish(tokio_stream::iter(vec![request]))
        .await
        .map(|_| ())
}

fn item_id(stored: &StoredItem) -> String {
    stored.item.as_ref().unwrap().id.clone()
}

/// Rule 6 on a subscription: a GREEN version superseded, in the same bundle, by an
/// AMBER version of the same id is never handed to a GREEN subscriber. Before the fix
/// the subscriber received the GREEN version (the stream judged every version it was
/// offered as if it were the latest), while `Get` answered the id as not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_never_hands_out_a_superseded_version() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let bob = hq.connect(RESEARCHER).await;
    let mut subscription = bob.subscribe(ItemFilter::default()).await.unwrap();

    let id = ItemId::new_random().to_string();
    let now = now_ms();
    let green = indicator(&id, "once-green.example", Tlp::Green, now - 2_000);
    let amber = indicator(&id, "now-amber.example", Tlp::Amber, now - 1_000);
    publish(&alice, vec![green, amber]).await.unwrap();
    // A marker the researcher may see, to know the subscription has caught up.
    let marker = indicator(
        &ItemId::new_random().to_string(),
        "marker.example",
        Tlp::Green,
        now,
    );
    publish(&alice, vec![marker.clone()]).await.unwrap();

    let first = tokio::time::timeout(DEADLINE, subscription.message())
        .await
        .expect("the subscription delivers in time")
        .expect("the subscription goes on")
        .expect("an item");
    assert_eq!(
        item_id(&first),
        marker.id,
        "the subscriber received a superseded version of an item whose latest version is withheld from it"
    );
    // The id is withheld from the researcher, exactly as an absent one.
    assert!(bob.get(&id).await.unwrap().is_none());
    hq.stop().await;
}
