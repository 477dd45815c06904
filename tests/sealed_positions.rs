//! What a peer pulling this node's change feed learns of the feed's positions: nothing
//! beyond what it receives. Positions leave the node only as sealed tokens (one length,
//! new bytes each time, bound to the peer), and checkpoints come after what the peer
//! receives, when the feed is caught up, and on a heartbeat: never because entries
//! withheld from the peer were read. Each test talks to a real node over mTLS with the
//! peer's own certificate and records every message of its `Pull` streams.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Pki;
use entente::client::NodeClient;
use entente::rpc::proto::federation_client::FederationClient;
use entente::rpc::proto::{PullRequest, PullResponse, pull_response};
use entente::sync::positions::TOKEN_LEN;
use entente::wire::{self, Tlp};
use entente::{Node, NodeId};
use tonic::Streaming;

const DEADLINE: Duration = Duration::from_secs(60);

/// Bundles withheld from the GREEN-limited peer, enough to span more than one page of
/// the feed.
const WITHHELD: usize = 300;

/// What a message of a pull stream shows, less the bytes that differ from run to run
/// (the random tokens, the bundles' own bytes): its kind, which fields are set, the
/// lengths of its tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Part {
        hops: u32,
        index: u32,
        last: bool,
        disclosed: u32,
        after_len: usize,
        whole_bundle_set: bool,
    },
    Checkpoint {
        cursor_len: usize,
        caught_up: bool,
    },
    Empty,
}

/// A message as seen, with its tokens.
fn seen(message: &PullResponse) -> (Seen, Vec<u8>) {
    match &message.event {
        Some(pull_response::Event::Bundle(b)) => {
            let part = b.part.clone().unwrap_or_default();
            (
                Seen::Part {
                    hops: b.hops,
                    index: part.index,
                    last: part.last,
                    disclosed: part.disclosed,
                    after_len: b.after.len(),
                    whole_bundle_set: !b.whole_bundle.is_empty(),
                },
                b.after.clone(),
            )
        }
        Some(pull_response::Event::Checkpoint(c)) => (
            Seen::Checkpoint {
                cursor_len: c.cursor.len(),
                caught_up: c.caught_up,
            },
            c.cursor.clone(),
        ),
        None => (Seen::Empty, Vec::new()),
    }
}

fn item(value: &str, tlp: Tlp) -> wire::Item {
    wire::Item {
        id: entente::model::ItemId::new_random().to_string(),
        modified_unix_ms: 0,
        tlp: tlp as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

/// A relationship between `ends`, of `tlp`.
fn relationship(ends: &[&str], tlp: Tlp) -> wire::Item {
    wire::Item {
        id: format!("relationship--{}", uuid::Uuid::new_v4()),
        modified_unix_ms: 0,
        tlp: tlp as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Context(wire::ContextObject {
            object_type: "relationship".into(),
            refs: ends.iter().map(|e| (*e).to_owned()).collect(),
            stix_properties: serde_json::json!({"relationship_type": "indicates"}).to_string(),
        })),
    }
}

/// A hub node whose peers (GREEN at most, every type) are named by `peers`; nothing
/// listens at their addresses.
struct Hub {
    pki: Pki,
    hq: NodeId,
    config: PathBuf,
    node: Node,
    analyst: NodeClient,
}

impl Hub {
    async fn start(peers: &[&str]) -> Self {
        let pki = Pki::new();
        let hq = pki.node("redmond.hq");
        for p in peers {
            pki.node(p);
        }
        pki.client("analyst.alice");
        let path: PathBuf = common::write_config(
            &pki,
            &hq,
            &[common::client("analyst.alice", "analyst")],
            &[],
        );
        let mut text = std::fs::read_to_string(&path).unwrap();
        for p in peers {
            text.push_str(&format!(
                "\n[[peer]]\nid = \"{p}\"\naddress = \"127.0.0.1:1\"\nrole = \"peer\"\nmax_tlp = \"GREEN\"\nallow_types = [\"*\"]\n"
            ));
        }
        std::fs::write(&path, text).unwrap();
        let node = common::start(&path).await;
        let analyst = common::connect(&pki, &node, "analyst.alice").await;
        Self {
            pki,
            hq,
            config: path,
            node,
            analyst,
        }
    }

    /// The same node stopped and started again on its store.
    async fn restart(self) -> Self {
        self.node.shutdown(DEADLINE).await.unwrap();
        let node = common::start(&self.config).await;
        let analyst = common::connect(&self.pki, &node, "analyst.alice").await;
        Self {
            node,
            analyst,
            ..self
        }
    }

    /// Publishes each of `bundles` as a bundle of its own, in order.
    async fn publish(&self, bundles: Vec<Vec<wire::Item>>) {
        common::publish_each(&self.analyst, bundles).await;
    }

    /// A `Pull` by `who` (with its own certificate) from `cursor`.
    async fn pull(&self, who: &str, cursor: Vec<u8>, follow: bool) -> Streaming<PullResponse> {
        let who = NodeId::new(who).unwrap();
        let channel = entente::transport::connect(
            self.pki.material(&who).client_config().unwrap(),
            &self.node.local_addr().to_string(),
            &self.hq,
        )
        .await
        .unwrap();
        FederationClient::new(channel)
            .pull(PullRequest {
                cursor,
                follow,
                protocol_version: entente::rpc::PROTOCOL_VERSION,
                resume: None,
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Every message of a whole pull (not following) by `who` from `cursor`, with its
    /// tokens.
    async fn pull_all(&self, who: &str, cursor: Vec<u8>) -> Vec<(Seen, Vec<u8>)> {
        let mut stream = self.pull(who, cursor, false).await;
        let mut out = Vec::new();
        while let Some(message) = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("the pull ended in time")
            .unwrap()
        {
            out.push(seen(&message));
        }
        out
    }

    async fn stop(self) {
        self.node.shutdown(DEADLINE).await.unwrap();
    }
}

/// The next message of a stream, within the deadline.
async fn next(stream: &mut Streaming<PullResponse>) -> (Seen, Vec<u8>) {
    let message = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("a message in time")
        .unwrap()
        .expect("the stream goes on");
    seen(&message)
}

/// Messages of a following stream up to and including the first caught-up checkpoint.
async fn until_caught_up(stream: &mut Streaming<PullResponse>) -> Vec<(Seen, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let message = next(stream).await;
        let done = matches!(
            message.0,
            Seen::Checkpoint {
                caught_up: true,
                ..
            }
        );
        out.push(message);
        if done {
            return out;
        }
    }
}

fn shapes(messages: &[(Seen, Vec<u8>)]) -> Vec<Seen> {
    messages.iter().map(|(s, _)| s.clone()).collect()
}

fn parts(messages: &[(Seen, Vec<u8>)]) -> usize {
    messages
        .iter()
        .filter(|(s, _)| matches!(s, Seen::Part { .. }))
        .count()
}

/// The last checkpoint's token.
fn last_cursor(messages: &[(Seen, Vec<u8>)]) -> Vec<u8> {
    messages
        .iter()
        .rev()
        .find(|(s, _)| matches!(s, Seen::Checkpoint { .. }))
        .map(|(_, t)| t.clone())
        .expect("a checkpoint")
}

/// A GREEN-limited peer pulls a hub holding 300 AMBER bundles among its GREEN ones,
/// and a hub holding the same GREEN bundles and no AMBER one: the two pulls are the
/// same message for message, save the random bytes of the tokens. Tokens have one
/// length, are new each time they are issued, work only for the peer they were issued
/// to, and one altered is served as no cursor at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_tell_from_a_pull_how_much_is_withheld_from_it() {
    common::init_logging();
    let run = |withheld: usize| async move {
        let hub = Hub::start(&["police.partner", "berlin.office"]).await;
        // GREEN, AMBER x n/2, GREEN, AMBER x n/2, GREEN: the withheld entries lie
        // between and across pages.
        let mut bundles = Vec::new();
        for (n, green) in ["one", "two", "three"].iter().enumerate() {
            bundles.push(vec![item(&format!("{green}.example"), Tlp::Green)]);
            if n < 2 {
                for k in 0..withheld / 2 {
                    bundles.push(vec![item(&format!("amber-{n}-{k}.example"), Tlp::Amber)]);
                }
            }
        }
        hub.publish(bundles).await;
        assert_eq!(
            hub.node.engine().store().feed_head(),
            3 + withheld as u64,
            "every bundle is an entry of the feed"
        );
        let first = hub.pull_all("police.partner", Vec::new()).await;
        (hub, first)
    };
    let (quiet, without) = run(0).await;
    let (busy, with) = run(WITHHELD).await;
    assert_eq!(parts(&with), 3, "the peer receives the GREEN bundles only");
    assert_eq!(
        shapes(&with),
        shapes(&without),
        "the pull differs with {WITHHELD} bundles withheld"
    );
    for (seen, token) in &with {
        assert_eq!(token.len(), TOKEN_LEN, "{seen:?}");
    }
    quiet.stop().await;

    // The same pull again: the same positions, other tokens.
    let again = busy.pull_all("police.partner", Vec::new()).await;
    assert_eq!(shapes(&again), shapes(&with));
    for ((_, a), (_, b)) in again.iter().zip(&with) {
        assert_ne!(a, b, "a token was issued twice with the same bytes");
    }

    // From the last checkpoint: nothing more, one checkpoint saying so.
    let caught_up = last_cursor(&with);
    let rest = busy.pull_all("police.partner", caught_up.clone()).await;
    assert_eq!(
        shapes(&rest),
        vec![Seen::Checkpoint {
            cursor_len: TOKEN_LEN,
            caught_up: true
        }]
    );

    // Served from the start: police's token handed by berlin, an altered token, a
    // token of another length, garbage.
    let mut altered = caught_up.clone();
    altered[TOKEN_LEN / 2] ^= 1;
    let cases = [
        ("berlin.office", caught_up.clone(), "another peer's token"),
        ("police.partner", altered, "an altered token"),
        (
            "police.partner",
            caught_up[..TOKEN_LEN - 1].to_vec(),
            "a short token",
        ),
        ("police.partner", vec![0xff; 3000], "garbage"),
    ];
    for (who, cursor, case) in cases {
        let from_start = busy.pull_all(who, cursor).await;
        assert_eq!(shapes(&from_start), shapes(&with), "{case}");
    }

    // The key outlives a restart: the token still opens.
    let busy = busy.restart().await;
    let rest = busy.pull_all("police.partner", caught_up).await;
    assert_eq!(
        shapes(&rest),
        vec![Seen::Checkpoint {
            cursor_len: TOKEN_LEN,
            caught_up: true
        }]
    );
    busy.stop().await;
}

/// Checkpoints are counted in transfers sent, not in pages read: 256 GREEN bundles
/// followed by 50 AMBER ones (the first page ends with the 256th transfer, and the feed
/// goes on) give the GREEN-limited peer the same messages as the 256 GREEN bundles alone
/// (the first page reaches the head); and 300 GREEN bundles give a checkpoint between
/// the 256th transfer and the next, wherever the pages end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_fall_alike_whatever_withheld_entries_follow_a_full_page() {
    common::init_logging();
    let run = |green: usize, amber: usize| async move {
        let hub = Hub::start(&["police.pages"]).await;
        let mut bundles: Vec<Vec<wire::Item>> = (0..green)
            .map(|n| vec![item(&format!("green-{n}.example"), Tlp::Green)])
            .collect();
        bundles.extend((0..amber).map(|n| vec![item(&format!("amber-{n}.example"), Tlp::Amber)]));
        hub.publish(bundles).await;
        let seen = hub.pull_all("police.pages", Vec::new()).await;
        hub.stop().await;
        shapes(&seen)
    };
    let alone = run(256, 0).await;
    let followed = run(256, 50).await;
    assert_eq!(followed, alone);
    let checkpoint = |caught_up| Seen::Checkpoint {
        cursor_len: TOKEN_LEN,
        caught_up,
    };
    assert_eq!(alone.len(), 257);
    assert_eq!(alone[256], checkpoint(true));
    let more = run(300, 0).await;
    assert_eq!(more.len(), 302);
    assert_eq!(more[256], checkpoint(false));
    assert_eq!(more[301], checkpoint(true));
}

/// While a peer follows the feed, a bundle withheld from it that the hub accepts sends
/// it nothing (the serving loop reads it and stays silent until the heartbeat); a
/// bundle it may see comes at once, with a checkpoint; with nothing happening, a
/// checkpoint comes on the heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_peer_hears_nothing_of_a_withheld_arrival() {
    common::init_logging();
    let hub = Hub::start(&["police.follower"]).await;
    hub.publish(vec![vec![item("first.example", Tlp::Green)]])
        .await;
    let opened = Instant::now();
    let mut stream = hub.pull("police.follower", Vec::new(), true).await;
    let caught_up = until_caught_up(&mut stream).await;
    assert_eq!(parts(&caught_up), 1);

    // A withheld arrival: wait until the serving loop has read it.
    hub.publish(vec![vec![item("withheld.example", Tlp::Amber)]])
        .await;
    let head = hub.node.engine().store().feed_head();
    let start = Instant::now();
    loop {
        let served = entente::telemetry::telemetry().served_positions();
        if served
            .get("police.follower")
            .is_some_and(|p| p.cursor >= head)
        {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the serving loop did not read it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing comes of it; only a heartbeat may come, and not before its time.
    match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
        Err(_) => {}
        Ok(message) => {
            let message = seen(&message.unwrap().unwrap());
            assert!(
                matches!(
                    message.0,
                    Seen::Checkpoint {
                        caught_up: true,
                        ..
                    }
                ) && opened.elapsed() >= entente::sync::feed::HEARTBEAT,
                "a withheld arrival sent {message:?}"
            );
        }
    }

    // A visible arrival: its part, then a checkpoint.
    hub.publish(vec![vec![item("second.example", Tlp::Green)]])
        .await;
    let mut got = vec![next(&mut stream).await];
    // A heartbeat may come first if it was due.
    while !matches!(got.last().unwrap().0, Seen::Part { .. }) {
        got.push(next(&mut stream).await);
    }
    let checkpoint = next(&mut stream).await;
    assert_eq!(
        checkpoint.0,
        Seen::Checkpoint {
            cursor_len: TOKEN_LEN,
            caught_up: true
        }
    );
    // With nothing happening, the heartbeat: a caught-up checkpoint within its period.
    let quiet = Instant::now();
    let heartbeat = next(&mut stream).await;
    assert_eq!(
        heartbeat.0,
        Seen::Checkpoint {
            cursor_len: TOKEN_LEN,
            caught_up: true
        }
    );
    assert!(quiet.elapsed() <= entente::sync::feed::HEARTBEAT + Duration::from_secs(5));
    drop(stream);
    hub.stop().await;
}

/// The scenario of a withheld object that references an arriving id, at the wire: a
/// RED relationship (withheld from the peer) names an id the peer then sees arrive.
/// The hub offers the relationship again when the id arrives, at a new position of
/// its feed; the peer, following, receives the same messages as when the held RED
/// relationship names something else, and a pull from its last checkpoint finds
/// nothing more in both cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_object_that_references_an_arriving_id_does_not_show_at_the_wire() {
    common::init_logging();
    let run = |references_probe: bool| async move {
        let peer = if references_probe {
            "police.with"
        } else {
            "police.without"
        };
        let hub = Hub::start(&[peer]).await;
        let known = item("known.example", Tlp::Green);
        let other = item("other.example", Tlp::Green);
        let probe = item("probe.example", Tlp::Green);
        let far_end = if references_probe { &probe } else { &other };
        let red = relationship(&[&known.id, &far_end.id], Tlp::Red);
        hub.publish(vec![vec![known.clone(), other.clone()], vec![red]])
            .await;
        let mut stream = hub.pull(peer, Vec::new(), true).await;
        let mut seen = until_caught_up(&mut stream).await;
        let head_before = hub.node.engine().store().feed_head();
        hub.publish(vec![vec![probe]]).await;
        // The probe's transfer and the checkpoint after it.
        loop {
            let message = next(&mut stream).await;
            let checkpoint = matches!(message.0, Seen::Checkpoint { .. });
            seen.push(message);
            if checkpoint && parts(&seen) == 2 {
                break;
            }
        }
        drop(stream);
        // The hub's own positions do count the relationship offered again.
        let moved = hub.node.engine().store().feed_head() - head_before;
        let rest = hub.pull_all(peer, last_cursor(&seen)).await;
        hub.stop().await;
        (seen, rest, moved)
    };
    let (without, rest_without, moved_without) = run(false).await;
    let (with, rest_with, moved_with) = run(true).await;
    assert!(
        moved_with > moved_without,
        "the hub offers the RED relationship again when the probe arrives ({moved_with} vs {moved_without})"
    );
    assert_eq!(
        parts(&with),
        2,
        "the peer receives the two GREEN bundles only"
    );
    assert_eq!(shapes(&with), shapes(&without));
    assert_eq!(shapes(&rest_with), shapes(&rest_without));
    assert_eq!(
        shapes(&rest_with),
        vec![Seen::Checkpoint {
            cursor_len: TOKEN_LEN,
            caught_up: true
        }]
    );
}

/// A node of this protocol refuses pullers of the ones before: protocol 2, whose
/// positions were numbers, and protocol 3, whose items could not carry every STIX
/// property as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pullers_of_protocols_2_and_3_are_refused() {
    let hub = Hub::start(&["police.old"]).await;
    let who = NodeId::new("police.old").unwrap();
    let channel = entente::transport::connect(
        hub.pki.material(&who).client_config().unwrap(),
        &hub.node.local_addr().to_string(),
        &hub.hq,
    )
    .await
    .unwrap();
    for old in [2, 3] {
        let status = FederationClient::new(channel.clone())
            .pull(PullRequest {
                cursor: Vec::new(),
                follow: false,
                protocol_version: old,
                resume: None,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("upgrade the puller"),
            "{status:?}"
        );
    }
    assert_eq!(entente::rpc::PROTOCOL_VERSION, 4);
    hub.stop().await;
}
