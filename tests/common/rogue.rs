//! A hostile peer for tests: a correctly certified node that serves a fixed feed of
//! whatever bundles a test builds (forged, tampered, over-hop ...) and the signer
//! certificates it chooses, over real mTLS.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use entente::crypto::{BundleSigner, sha256};
use entente::model::{Distribution, Item, NodeId, Partner, PartnerKind};
use entente::rpc::proto::federation_server::{Federation, FederationServer};
use entente::rpc::proto::{
    CertificateChain, Checkpoint, GetCertificatesRequest, GetCertificatesResponse, HelloRequest,
    HelloResponse, PullRequest, PullResponse, pull_response,
};
use entente::transport::{Directory, TlsMaterial};
use entente::wire;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// One entry of the rogue's feed: its position and the messages that carry it.
#[derive(Clone)]
pub struct Entry {
    pub seq: u64,
    pub messages: Vec<PullResponse>,
}

/// The feed entry at `seq`: `bundle`, held by the rogue at `hops`, in parts as a node
/// sends it.
pub fn feed(seq: u64, bundle: wire::SignedBundle, hops: u32) -> Entry {
    Entry {
        seq,
        messages: entente::rpc::bundle_responses(seq, hops, bundle),
    }
}

/// The feed entry at `seq` carried by whatever `messages` a test crafts.
pub fn crafted(seq: u64, messages: Vec<PullResponse>) -> Entry {
    Entry { seq, messages }
}

/// A signer for the identity `m`.
pub fn signer(m: &TlsMaterial) -> BundleSigner {
    BundleSigner::new(
        m.id.clone(),
        m.private_key_pkcs8().unwrap(),
        m.certificate_der(),
    )
    .unwrap()
}

/// `items` signed by `by` as one bundle, a second ago, every item disclosed.
pub fn sign(by: &TlsMaterial, items: &[Item], distribution: Distribution) -> wire::SignedBundle {
    signer(by)
        .sign(items, &distribution, entente::engine::now_ms() - 1000)
        .unwrap()
        .to_wire(|_| true)
}

/// The rogue's service: its whole feed after any cursor, then a checkpoint, and the
/// certificates in `certificates` (which a test may add to while it runs).
pub struct Rogue {
    pub feed: Vec<Entry>,
    pub certificates: Arc<Mutex<Vec<Vec<u8>>>>,
}

type PullStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<PullResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Federation for Rogue {
    async fn offer_crl(
        &self,
        _request: tonic::Request<entente::rpc::proto::OfferCrlRequest>,
    ) -> Result<tonic::Response<entente::rpc::proto::OfferCrlResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not offered CRLs"))
    }
    async fn hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        Err(Status::unimplemented("rogue"))
    }

    type PullStream = PullStream;

    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<PullStream>, Status> {
        // A stand-in's position tokens are its positions in the clear.
        let after = entente::sync::positions::plain_position(&request.into_inner().cursor);
        let mut out: Vec<Result<PullResponse, Status>> = self
            .feed
            .iter()
            .filter(|e| e.seq > after)
            .flat_map(|e| e.messages.iter().cloned().map(Ok))
            .collect();
        let head = self.feed.len() as u64;
        out.push(Ok(PullResponse {
            event: Some(pull_response::Event::Checkpoint(Checkpoint {
                cursor: entente::sync::positions::plain_token(head),
                caught_up: true,
            })),
        }));
        Ok(Response::new(Box::pin(tokio_stream::iter(out))))
    }

    async fn get_certificates(
        &self,
        request: Request<GetCertificatesRequest>,
    ) -> Result<Response<GetCertificatesResponse>, Status> {
        Ok(answer_certificates(&self.certificates, request))
    }
}

/// The certificates of `held` that `request` asks for.
fn answer_certificates(
    held: &Mutex<Vec<Vec<u8>>>,
    request: Request<GetCertificatesRequest>,
) -> Response<GetCertificatesResponse> {
    let wanted = request.into_inner().sha256;
    let chains = held
        .lock()
        .unwrap()
        .iter()
        .filter(|der| wanted.iter().any(|w| w.as_slice() == sha256(der)))
        .map(|der| CertificateChain {
            sha256: sha256(der).to_vec(),
            der: vec![der.clone()],
        })
        .collect();
    Response::new(GetCertificatesResponse { chains })
}

/// A rogue that answers the n-th pull with the n-th script a test wrote (the last one
/// again once they run out), then ends the stream; it records every pull request. A
/// test may add scripts while it runs.
#[derive(Clone, Default)]
pub struct Scripted {
    pub scripts: Arc<Mutex<Vec<Vec<PullResponse>>>>,
    pub requests: Arc<Mutex<Vec<PullRequest>>>,
    pub certificates: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Scripted {
    /// Answers every pull with `script`, offering `certificates`.
    pub fn new(script: Vec<PullResponse>, certificates: Vec<Vec<u8>>) -> Self {
        Self {
            scripts: Arc::new(Mutex::new(vec![script])),
            requests: Arc::default(),
            certificates: Arc::new(Mutex::new(certificates)),
        }
    }

    /// Pulls answered so far.
    pub fn pulls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// A checkpoint message at `cursor` (a position in the clear, as a stand-in gives
/// it), caught up when `cursor` has reached `head`.
pub fn checkpoint(cursor: u64, head: u64) -> PullResponse {
    PullResponse {
        event: Some(pull_response::Event::Checkpoint(Checkpoint {
            cursor: entente::sync::positions::plain_token(cursor),
            caught_up: cursor >= head,
        })),
    }
}

/// A stored cursor as the position a stand-in gave in the clear (0 for none).
pub fn plain(cursor: Vec<u8>) -> u64 {
    entente::sync::positions::plain_position(&cursor)
}

#[tonic::async_trait]
impl Federation for Scripted {
    async fn offer_crl(
        &self,
        _request: tonic::Request<entente::rpc::proto::OfferCrlRequest>,
    ) -> Result<tonic::Response<entente::rpc::proto::OfferCrlResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not offered CRLs"))
    }
    async fn hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        Err(Status::unimplemented("rogue"))
    }

    type PullStream = PullStream;

    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<PullStream>, Status> {
        let script = {
            let mut requests = self.requests.lock().unwrap();
            requests.push(request.into_inner());
            let scripts = self.scripts.lock().unwrap();
            scripts[(requests.len() - 1).min(scripts.len() - 1)].clone()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(
            script.into_iter().map(Ok),
        ))))
    }

    async fn get_certificates(
        &self,
        request: Request<GetCertificatesRequest>,
    ) -> Result<Response<GetCertificatesResponse>, Status> {
        Ok(answer_certificates(&self.certificates, request))
    }
}

/// A running rogue server; [`RogueServer::stop`] ends it.
pub struct RogueServer {
    pub addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RogueServer {
    /// Serves `rogue` as the identity `material` on 127.0.0.1:0, accepting `puller`
    /// as a peer node.
    pub async fn start<S: Federation>(material: &TlsMaterial, puller: &NodeId, rogue: S) -> Self {
        let directory = Arc::new(Directory::new(
            &material.id,
            [Partner {
                id: puller.clone(),
                kind: PartnerKind::Node,
                role: entente::Role::Peer,
            }],
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let (incoming, accept_task) = entente::transport::listener::accept(
            listener,
            material.server_config(directory.clone()).unwrap(),
            directory,
            &entente::limits::Limits::default(),
            stop.clone(),
        );
        let server = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(FederationServer::new(rogue))
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await;
            })
        };
        Self {
            addr,
            stop,
            tasks: vec![accept_task, server],
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
