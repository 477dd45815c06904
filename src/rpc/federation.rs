//! `entente.v1.Federation`: the node-to-node service.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::{caller, require_node};
use super::proto::federation_server::Federation;
use super::proto::{
    CertificateChain, Checkpoint, FeedBundle, GetCertificatesRequest, GetCertificatesResponse,
    HelloRequest, HelloResponse, PullRequest, PullResponse, pull_response,
};
use super::{CAPABILITIES, PROTOCOL_VERSION};
use crate::engine::Engine;
use crate::model::NodeId;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The Federation service of one node.
#[derive(Clone)]
pub struct FederationService {
    node_id: NodeId,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
}

impl FederationService {
    /// The service for node `node_id`; pull streams end when `shutdown` is cancelled.
    pub fn new(node_id: NodeId, engine: Arc<Engine>, shutdown: CancellationToken) -> Self {
        Self {
            node_id,
            engine,
            shutdown,
        }
    }
}

/// Feed entries read per pull page.
const PULL_PAGE: usize = 256;
/// Most certificates answered per request.
const MAX_CERTIFICATES: usize = 64;

#[tonic::async_trait]
impl Federation for FederationService {
    async fn hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloResponse>, Status> {
        let partner = caller(&request)?.partner.clone();
        let HelloRequest {
            node_id,
            protocol_version,
            capabilities: _,
        } = request.into_inner();
        if !node_id.is_empty() && node_id != partner.id.as_str() {
            return Err(Status::invalid_argument(format!(
                "node_id {node_id:?} does not match the certificate id {}",
                partner.id
            )));
        }
        if protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version {protocol_version} is not supported; this node speaks {PROTOCOL_VERSION}"
            )));
        }
        tracing::info!(caller = %partner.id, role = %partner.role, "hello");
        Ok(Response::new(HelloResponse {
            node_id: self.node_id.to_string(),
            protocol_version: PROTOCOL_VERSION,
            capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
            caller_id: partner.id.to_string(),
            caller_role: partner.role.to_string(),
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    type PullStream = Pin<Box<dyn Stream<Item = Result<PullResponse, Status>> + Send + 'static>>;

    async fn pull(
        &self,
        request: Request<PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let info = caller(&request)?;
        require_node(info)?;
        let partner = info.partner.clone();
        let connection = info.clone();
        let PullRequest { cursor, follow } = request.into_inner();
        let engine = self.engine.clone();
        let shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<PullResponse, Status>>(64);
        let cursor = engine.serving_cursor(&partner.id, cursor)?;
        tokio::spawn(async move {
            let mut cursor = cursor;
            let mut feed = engine.watch_feed();
            let mut policy = engine.watch_policy();
            let mut fingerprint = engine.policy().partner_fingerprint(&partner.id);
            loop {
                if let Some(withdrawal) = connection.withdrawal() {
                    let _ = tx.send(Err(Status::from(withdrawal))).await;
                    return;
                }
                // A reload that changes this partner's policy replays its feed from the start.
                let now = engine.policy().partner_fingerprint(&partner.id);
                if now != fingerprint {
                    fingerprint = now;
                    match engine.serving_cursor(&partner.id, cursor) {
                        Ok(c) => cursor = c,
                        Err(error) => {
                            let _ = tx.send(Err(Status::from(error))).await;
                            return;
                        }
                    }
                }
                let page = {
                    let engine = engine.clone();
                    let partner = partner.clone();
                    tokio::task::spawn_blocking(move || {
                        engine.pull_page(&partner, cursor, PULL_PAGE)
                    })
                    .await
                };
                let page = match page {
                    Ok(Ok(page)) => page,
                    Ok(Err(error)) => {
                        let _ = tx.send(Err(Status::from(error))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("task failed: {e}"))))
                            .await;
                        return;
                    }
                };
                for b in page.bundles {
                    let message = PullResponse {
                        event: Some(pull_response::Event::Bundle(FeedBundle {
                            seq: b.seq,
                            bundle: Some(b.bundle),
                            hops: b.hops,
                        })),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                let embargo_until = page.embargo_until;
                let caught_up = page.cursor >= page.head || embargo_until.is_some();
                cursor = page.cursor;
                let checkpoint = PullResponse {
                    event: Some(pull_response::Event::Checkpoint(Checkpoint {
                        cursor,
                        head: page.head,
                    })),
                };
                if tx.send(Ok(checkpoint)).await.is_err() {
                    return;
                }
                if !caught_up {
                    continue;
                }
                if !follow {
                    return;
                }
                // Tail: wait for the feed to move past the cursor (or, when an embargo holds
                // the next entry back, for the embargo to pass), the client to go, or shutdown.
                let embargo = async move {
                    match embargo_until {
                        Some(until) => {
                            let wait = u64::try_from(until - crate::engine::now_ms()).unwrap_or(0);
                            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::pin!(embargo);
                loop {
                    if embargo_until.is_none() && *feed.borrow_and_update() > cursor {
                        break;
                    }
                    if policy.has_changed().unwrap_or(false) {
                        policy.mark_unchanged();
                        break;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            let _ = tx.send(Err(Status::unavailable("node is shutting down"))).await;
                            return;
                        }
                        _ = tx.closed() => return,
                        withdrawal = connection.withdrawn() => {
                            let _ = tx.send(Err(Status::from(withdrawal))).await;
                            return;
                        }
                        changed = feed.changed() => if changed.is_err() { return },
                        changed = policy.changed() => {
                            if changed.is_err() { return }
                            break;
                        }
                        _ = &mut embargo => break,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_certificates(
        &self,
        request: Request<GetCertificatesRequest>,
    ) -> Result<Response<GetCertificatesResponse>, Status> {
        let info = caller(&request)?;
        require_node(info)?;
        let partner = info.partner.id.clone();
        let GetCertificatesRequest { sha256 } = request.into_inner();
        if sha256.len() > MAX_CERTIFICATES {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_CERTIFICATES} certificates per request"
            )));
        }
        let mut chains = Vec::new();
        for fingerprint in sha256 {
            let Ok(key) = <[u8; 32]>::try_from(fingerprint.as_slice()) else {
                return Err(Status::invalid_argument("a fingerprint is 32 bytes"));
            };
            if let Some(der) = self.engine.signer_certificate_for(&partner, &key)? {
                chains.push(CertificateChain {
                    sha256: fingerprint,
                    der: vec![der],
                });
            }
        }
        Ok(Response::new(GetCertificatesResponse { chains }))
    }
}
