//! A review of federation protocol 3 (sealed feed positions). As a peer pulling a real
//! node over mTLS with its own certificate: what the answers to `Pull` requests it is
//! free to write (cursor tokens it holds, resume offers) tell it of bundles withheld
//! from it, and whether a policy change can leave it without bundles it may now see. As
//! a node pulling from a stand-in serving node: whether continuing a transfer can carry
//! its cursor past a bundle it refused for now. And the position key's file mode.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::Pki;
use entente::client::NodeClient;
use entente::rpc::proto::federation_client::FederationClient;
use entente::rpc::proto::{BundleResume, PullRequest, PullResponse, pull_response};
use entente::wire::{self, Tlp};
use entente::{Node, NodeId};

const DEADLINE: Duration = Duration::from_secs(60);

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

/// What a message shows, less its random bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Part { hops: u32, index: u32, last: bool },
    Checkpoint { caught_up: bool },
    Empty,
}

fn seen(message: &PullResponse) -> Seen {
    match &message.event {
        Some(pull_response::Event::Bundle(b)) => {
            let part = b.part.clone().unwrap_or_default();
            Seen::Part {
                hops: b.hops,
                index: part.index,
                last: part.last,
            }
        }
        Some(pull_response::Event::Checkpoint(c)) => Seen::Checkpoint {
            caught_up: c.caught_up,
        },
        None => Seen::Empty,
    }
}

/// A node with one GREEN-limited peer (nothing listens at its address).
struct Hub {
    pki: Pki,
    hq: NodeId,
    config: PathBuf,
    node: Node,
    analyst: NodeClient,
    peer: &'static str,
}

impl Hub {
    async fn start(peer: &'static str) -> Self {
        let pki = Pki::new();
        let hq = pki.node("redmond.hq");
        pki.node(peer);
        pki.client("analyst.alice");
        let config = common::write_config(
            &pki,
            &hq,
            &[common::client("analyst.alice", "analyst")],
            &[],
        );
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "\n[[peer]]\nid = \"{peer}\"\naddress = \"127.0.0.1:1\"\nrole = \"peer\"\nmax_tlp = \"GREEN\"\nallow_types = [\"*\"]\n"
        ));
        std::fs::write(&config, text).unwrap();
        let node = common::start(&config).await;
        let analyst = common::connect(&pki, &node, "analyst.alice").await;
        Self {
            pki,
            hq,
            config,
            node,
            analyst,
            peer,
        }
    }

    /// Publishes each of `bundles` as a bundle of its own, in order.
    async fn publish(&self, bundles: Vec<Vec<wire::Item>>) {
        common::publish_each(&self.analyst, bundles).await;
    }

    /// A `Pull` by the peer (not following) from `cursor`, offering `resume`.
    async fn open(
        &self,
        cursor: Vec<u8>,
        resume: Option<BundleResume>,
    ) -> tonic::Streaming<PullResponse> {
        let who = NodeId::new(self.peer).unwrap();
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
                follow: false,
                protocol_version: entente::rpc::PROTOCOL_VERSION,
                resume,
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Every message of such a pull.
    async fn pull(&self, cursor: Vec<u8>, resume: Option<BundleResume>) -> Vec<PullResponse> {
        let mut stream = self.open(cursor, resume).await;
        let mut out = Vec::new();
        while let Some(message) = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("the pull ended in time")
            .unwrap()
        {
            out.push(message);
        }
        out
    }

    async fn stop(self) {
        self.node.shutdown(DEADLINE).await.unwrap();
    }
}

fn shapes(messages: &[PullResponse]) -> Vec<Seen> {
    messages.iter().map(seen).collect()
}

/// The last checkpoint's token.
fn last_cursor(messages: &[PullResponse]) -> Vec<u8> {
    messages
        .iter()
        .rev()
        .find_map(|m| match &m.event {
            Some(pull_response::Event::Checkpoint(c)) => Some(c.cursor.clone()),
            _ => None,
        })
        .expect("a checkpoint")
}

/// The first bundle part of `messages`: its hop count and transfer digest.
fn first_transfer(messages: &[PullResponse]) -> (u32, Vec<u8>) {
    messages
        .iter()
        .find_map(|m| match &m.event {
            Some(pull_response::Event::Bundle(b)) => {
                Some((b.hops, b.part.clone().unwrap_or_default().transfer_sha256))
            }
            _ => None,
        })
        .expect("a bundle part")
}

/// A resume offer is free for the puller to write: it may name as the transfer's
/// `after` a checkpoint token it holds, and any hop count and digest. The serving node
/// honoured an offer only when the `after` it opens to is the cursor and the entry
/// just after that position is the transfer's: so whether it was honoured (the
/// bundle skipped or continued, or sent whole) told the peer whether any entry lay
/// between its checkpoint and the next bundle it may see, i.e. whether a bundle
/// withheld from it had arrived in between. Here the peer takes a checkpoint after
/// one GREEN bundle; then a second GREEN bundle arrives, alone or after an AMBER one;
/// the peer offers resumes from its checkpoint: the answers must not differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_offer_does_not_tell_whether_a_withheld_bundle_arrived() {
    common::init_logging();
    let run = |withheld: bool| async move {
        let hub = Hub::start(if withheld {
            "police.resume-with"
        } else {
            "police.resume-without"
        })
        .await;
        hub.publish(vec![vec![item("first.example", Tlp::Green)]])
            .await;
        let first = hub.pull(Vec::new(), None).await;
        let checkpoint = last_cursor(&first);
        let mut later = Vec::new();
        if withheld {
            later.push(vec![item("amber.example", Tlp::Amber)]);
        }
        later.push(vec![item("second.example", Tlp::Green)]);
        hub.publish(later).await;
        let plain = hub.pull(checkpoint.clone(), None).await;
        let (hops, transfer) = first_transfer(&plain);
        // An offer to continue "the transfer after the checkpoint" at a high hop count
        // (bundles of lower hop counts of that entry are taken to be held whole), and
        // one to continue the second bundle's own transfer past its only part.
        let high = BundleResume {
            hops: u32::MAX,
            transfer_sha256: vec![0; 32],
            next_part: 0,
            after: checkpoint.clone(),
        };
        let own = BundleResume {
            hops,
            transfer_sha256: transfer,
            next_part: 1,
            after: checkpoint.clone(),
        };
        let answers = vec![
            shapes(&plain),
            shapes(&hub.pull(checkpoint.clone(), Some(high)).await),
            shapes(&hub.pull(checkpoint.clone(), Some(own)).await),
        ];
        hub.stop().await;
        answers
    };
    let without = run(false).await;
    let with = run(true).await;
    assert_eq!(
        with[0], without[0],
        "a plain pull already differs (not what is tested here)"
    );
    assert_eq!(
        with[1], without[1],
        "a resume offer at a high hop count answered differently with a withheld bundle between"
    );
    assert_eq!(
        with[2], without[2],
        "a resume offer of the next bundle's transfer answered differently with a withheld bundle between"
    );
}

/// A bundle withheld from a peer, then the peer's policy widened so that it may see
/// it: the peer's next pull is served from the start. If that pull breaks before the
/// peer has stored anything of it (a connection lost, a puller restarted), the peer
/// pulls again with the token it still holds, issued under the old policy: it must
/// still be served what the new policy lets it see, not only what follows the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_a_widened_policy_discloses_is_not_lost_to_a_pull_that_breaks() {
    common::init_logging();
    let hub = Hub::start("police.widened").await;
    hub.publish(vec![
        vec![item("amber.example", Tlp::Amber)],
        vec![item("green.example", Tlp::Green)],
    ])
    .await;
    let first = hub.pull(Vec::new(), None).await;
    assert_eq!(
        shapes(&first),
        vec![
            Seen::Part {
                hops: 0,
                index: 0,
                last: true
            },
            Seen::Checkpoint { caught_up: true }
        ]
    );
    let held = last_cursor(&first);

    // The operator lets the peer see AMBER.
    let text = std::fs::read_to_string(&hub.config).unwrap();
    std::fs::write(
        &hub.config,
        text.replace("max_tlp = \"GREEN\"", "max_tlp = \"AMBER\""),
    )
    .unwrap();
    hub.node.reload_policy().expect("reload");

    // A pull that breaks before the peer reads anything of it.
    drop(hub.open(held.clone(), None).await);

    // Pulled again with the token held: the AMBER bundle comes.
    let again = hub.pull(held, None).await;
    let parts = shapes(&again)
        .iter()
        .filter(|s| matches!(s, Seen::Part { .. }))
        .count();
    assert_eq!(
        parts,
        2,
        "after the widening, the peer was not served the AMBER bundle: {:?}",
        shapes(&again)
    );
    hub.stop().await;
}

/// The position key is the one secret that turns every token a partner holds back into
/// a count of the node's feed. The node's TLS key is refused when others than its
/// owner may read it; the position key was taken whatever its mode (a data directory
/// copied or restored with a loose umask): it is refused the same way, and a key left
/// to its owner still loads.
#[cfg(unix)]
#[test]
fn a_position_key_open_to_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(entente::sync::positions::KEY_FILE);
    std::fs::write(&path, [9u8; 32]).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let loaded = entente::sync::PositionTokens::load_or_create(dir.path());
        assert!(loaded.is_err(), "a key of mode {mode:o} was taken");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tokens = entente::sync::PositionTokens::load_or_create(dir.path()).unwrap();
    let partner = NodeId::new("police.partner").unwrap();
    let token = tokens.seal(&partner, &[1; 32], 5).unwrap();
    assert_eq!(tokens.open(&partner, &[1; 32], &token), Some(5));
}

/// A stand-in for a serving node that continues a transfer when asked to, as a node of
/// this protocol does: its first answer ends in the middle of a transfer; a pull that
/// offers to continue it is answered with the rest (the transfers of the entry before
/// it, at lower hop counts, taken as held); any other pull with the whole feed.
#[derive(Clone)]
struct Continuing {
    first: Vec<PullResponse>,
    continued: Vec<PullResponse>,
    whole: Vec<PullResponse>,
    requests: std::sync::Arc<std::sync::Mutex<Vec<PullRequest>>>,
    certificate: Vec<u8>,
}

#[tonic::async_trait]
impl entente::rpc::proto::federation_server::Federation for Continuing {
    async fn offer_crl(
        &self,
        _: tonic::Request<entente::rpc::proto::OfferCrlRequest>,
    ) -> Result<tonic::Response<entente::rpc::proto::OfferCrlResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("stand-in"))
    }

    async fn hello(
        &self,
        _: tonic::Request<entente::rpc::proto::HelloRequest>,
    ) -> Result<tonic::Response<entente::rpc::proto::HelloResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("stand-in"))
    }

    type PullStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<PullResponse, tonic::Status>> + Send>,
    >;

    async fn pull(
        &self,
        request: tonic::Request<PullRequest>,
    ) -> Result<tonic::Response<Self::PullStream>, tonic::Status> {
        let request = request.into_inner();
        let script = {
            let mut requests = self.requests.lock().unwrap();
            let script = if requests.is_empty() {
                self.first.clone()
            } else if request.resume.is_some() {
                self.continued.clone()
            } else {
                self.whole.clone()
            };
            requests.push(request);
            script
        };
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(
            script.into_iter().map(Ok),
        ))))
    }

    async fn get_certificates(
        &self,
        request: tonic::Request<entente::rpc::proto::GetCertificatesRequest>,
    ) -> Result<tonic::Response<entente::rpc::proto::GetCertificatesResponse>, tonic::Status> {
        let own = entente::crypto::sha256(&self.certificate);
        let chains = request
            .into_inner()
            .sha256
            .into_iter()
            .filter(|w| w.as_slice() == own)
            .map(|w| entente::rpc::proto::CertificateChain {
                sha256: w,
                der: vec![self.certificate.clone()],
            })
            .collect();
        Ok(tonic::Response::new(
            entente::rpc::proto::GetCertificatesResponse { chains },
        ))
    }
}

/// `n` GREEN domains of about 550 bytes each, modified at `modified_ms`.
fn domains(n: usize, tag: &str, modified_ms: i64) -> Vec<entente::model::Item> {
    use entente::model::{Indicator, IndicatorType, Item, ItemId, ItemKind};
    (0..n)
        .map(|i| Item {
            id: ItemId::new_random(),
            modified_ms,
            tlp: entente::model::Tlp::Green,
            tags: vec![],
            kind: ItemKind::Indicator(Indicator {
                indicator_type: IndicatorType::Domain,
                value: format!("host-{tag}-{i}.example"),
                description: "d".repeat(500),
                confidence: 50,
                kill_chain_phases: vec![],
                valid_from_ms: modified_ms.min(entente::engine::now_ms()) - 10_000,
                valid_until_ms: None,
                properties: Default::default(),
            }),
        })
        .collect()
}

/// The puller offers to continue a transfer cut short, and a serving node that takes
/// the offer passes over the transfers of the same feed entry at lower hop counts, as
/// held whole. One of them may instead have been refused for a passing reason (an item
/// dated ahead of this clock): the puller forgot it at the new connection, stored the
/// cursors after the continued transfer, and never pulled it again. Here the entry's
/// first transfer is refused for now and the connection ends in its second; the next
/// pull after the continuation must still be made from before the refused one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continued_transfer_does_not_carry_the_cursor_past_a_bundle_refused_for_now() {
    use common::rogue::{RogueServer, checkpoint, plain, sign};
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let rogue = pki.node("rogue.continuing");
    pki.client("ops.admin");
    let material = pki.material(&rogue);
    let now = entente::engine::now_ms();
    let ahead = sign(
        &material,
        &domains(1, "ahead", now + 3_600_000),
        entente::model::Distribution::default(),
    );
    let big = sign(
        &material,
        &domains(5000, "big", now - 10_000),
        entente::model::Distribution::default(),
    );
    let small = sign(
        &material,
        &domains(2, "small", now - 10_000),
        entente::model::Distribution::default(),
    );
    // One feed entry (position 1) carries the refused transfer then the big one; the
    // next entry carries the small bundle.
    let ahead_parts = entente::rpc::bundle_responses(1, 0, ahead);
    let big_parts = entente::rpc::bundle_responses(1, 0, big);
    assert!(big_parts.len() >= 3, "{} parts", big_parts.len());
    let small_parts = entente::rpc::bundle_responses(2, 0, small.clone());
    let first: Vec<PullResponse> = ahead_parts.iter().chain(&big_parts[..2]).cloned().collect();
    let continued: Vec<PullResponse> = big_parts[2..]
        .iter()
        .chain(&small_parts)
        .cloned()
        .chain([checkpoint(2, 2)])
        .collect();
    let whole: Vec<PullResponse> = ahead_parts
        .iter()
        .chain(&big_parts)
        .chain(&small_parts)
        .cloned()
        .chain([checkpoint(2, 2)])
        .collect();
    let stand_in = Continuing {
        first,
        continued,
        whole,
        requests: Default::default(),
        certificate: material.certificate_der().to_vec(),
    };
    let requests = stand_in.requests.clone();
    let server = RogueServer::start(&material, &hq, stand_in).await;

    let config = common::write_config(&pki, &hq, &[common::client("ops.admin", "admin")], &[]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[peer]]\nid = \"{rogue}\"\naddress = \"{}\"\nmax_tlp = \"GREEN\"\nallow_types = [\"*\"]\n",
        server.addr
    ));
    std::fs::write(&config, text).unwrap();
    let node = common::start(&config).await;

    let start = std::time::Instant::now();
    while requests.lock().unwrap().len() < 3 {
        assert!(
            start.elapsed() < DEADLINE,
            "the link did not pull three times"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let third = plain(requests.lock().unwrap()[2].cursor.clone());
    assert_eq!(
        third, 0,
        "the link pulled from position {third}, past the bundle it refused for now at position 1"
    );
    node.shutdown(DEADLINE).await.unwrap();
    server.stop().await;
}
