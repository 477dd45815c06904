//! The demo's rogue peer: a node with a valid federation certificate whose operator
//! turned hostile. It serves the `Federation` service over real mTLS like any node,
//! but its change feed holds whatever bundles the demo hands it (forged or tampered),
//! released one at a time so the demo can show each rejection.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::crypto::sha256;
use crate::model::{NodeId, PartnerKind, Role};
use crate::rpc::proto::federation_server::{Federation, FederationServer};
use crate::rpc::proto::{
    CertificateChain, Checkpoint, GetCertificatesRequest, GetCertificatesResponse, HelloRequest,
    HelloResponse, PullRequest, PullResponse, pull_response,
};
use crate::transport::{Directory, Partner, TlsMaterial};

type PullStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<PullResponse, Status>> + Send>>;

/// A feed entry: its position and the messages that carry it.
type Entry = (u64, Vec<PullResponse>);

struct Service {
    feed: watch::Receiver<Vec<Entry>>,
    stop: CancellationToken,
    certificate: Vec<u8>,
}

#[tonic::async_trait]
impl Federation for Service {
    async fn offer_crl(
        &self,
        _request: tonic::Request<crate::rpc::proto::OfferCrlRequest>,
    ) -> Result<tonic::Response<crate::rpc::proto::OfferCrlResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not offered CRLs"))
    }
    async fn hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        Err(Status::unimplemented("not offered"))
    }

    type PullStream = PullStream;

    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<PullStream>, Status> {
        let request = request.into_inner();
        // A stand-in's tokens are its positions in the clear.
        let mut cursor = crate::sync::positions::plain_position(&request.cursor);
        let mut feed = self.feed.clone();
        let stop = self.stop.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let entries: Vec<Entry> = feed
                    .borrow_and_update()
                    .iter()
                    .filter(|(seq, _)| *seq > cursor)
                    .cloned()
                    .collect();
                for (seq, messages) in entries {
                    cursor = seq;
                    for message in messages {
                        if tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                }
                let checkpoint = pull_response::Event::Checkpoint(Checkpoint {
                    cursor: crate::sync::positions::plain_token(cursor),
                    caught_up: true,
                });
                if tx
                    .send(Ok(PullResponse {
                        event: Some(checkpoint),
                    }))
                    .await
                    .is_err()
                    || !request.follow
                {
                    return;
                }
                tokio::select! {
                    changed = feed.changed() => if changed.is_err() { return },
                    _ = stop.cancelled() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_certificates(
        &self,
        request: Request<GetCertificatesRequest>,
    ) -> Result<Response<GetCertificatesResponse>, Status> {
        let fingerprint = sha256(&self.certificate);
        let chains = request
            .into_inner()
            .sha256
            .iter()
            .filter(|wanted| wanted.as_slice() == fingerprint)
            .map(|_| CertificateChain {
                sha256: fingerprint.to_vec(),
                der: vec![self.certificate.clone()],
            })
            .take(1)
            .collect();
        Ok(Response::new(GetCertificatesResponse { chains }))
    }
}

/// A running rogue node.
pub struct Rogue {
    feed: watch::Sender<Vec<Entry>>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Rogue {
    /// Serves as `material` on `listener`, to the one node `victim`.
    pub fn start(
        material: &TlsMaterial,
        listener: tokio::net::TcpListener,
        victim: &NodeId,
    ) -> anyhow::Result<Self> {
        let directory = Arc::new(Directory::new(
            &material.id,
            [Partner {
                id: victim.clone(),
                kind: PartnerKind::Node,
                role: Role::Peer,
            }],
        ));
        let (feed, receiver) = watch::channel(Vec::new());
        let stop = CancellationToken::new();
        let (incoming, accept_task) = crate::transport::listener::accept(
            listener,
            material.server_config(directory.clone())?,
            directory,
            &crate::limits::Limits::default(),
            stop.clone(),
        );
        let service = Service {
            feed: receiver,
            stop: stop.clone(),
            certificate: material.certificate_der().to_vec(),
        };
        let shutdown = stop.clone();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(FederationServer::new(service))
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await;
            let _ = accept_task.await;
        });
        Ok(Self { feed, stop, server })
    }

    /// Appends `bundle` to the rogue's feed, claiming it holds the items at `hops`.
    pub fn offer(&self, bundle: crate::wire::SignedBundle, hops: u32) {
        self.feed.send_modify(|feed| {
            let seq = feed.len() as u64 + 1;
            feed.push((seq, crate::rpc::bundle_responses(seq, hops, bundle)));
        });
    }

    /// Stops serving.
    pub async fn stop(self) {
        self.stop.cancel();
        let mut server = self.server;
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
    }
}
