//! `entente.v1.Federation`: the node-to-node service.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::{caller, require_node};
use super::proto::federation_server::Federation;
use super::proto::{
    CertificateChain, GetCertificatesRequest, GetCertificatesResponse, HelloRequest, HelloResponse,
    PullRequest, PullResponse,
};
use super::{CAPABILITIES, PROTOCOL_VERSION, convert};
use crate::engine::Engine;
use crate::model::NodeId;
use crate::sync::{FeedRequest, PositionTokens, Resume, Withdrawable};
use crate::transport::{ConnectionInfo, Withdrawal};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The Federation service of one node.
#[derive(Clone)]
pub struct FederationService {
    node_id: NodeId,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
    /// Where offered CRLs go; `None` refuses them.
    crls: Option<Arc<dyn super::admin::PolicyReload>>,
    /// The sealing of feed positions for pullers: the key's directory, and the key once
    /// loaded (or created) on the first pull.
    positions: Arc<Positions>,
}

/// The position key of a node, loaded on first use.
struct Positions {
    dir: std::path::PathBuf,
    tokens: std::sync::OnceLock<Arc<PositionTokens>>,
}

impl Positions {
    /// The tokens, the key loaded or created now if it was not yet. A failure is not
    /// kept: the next pull tries again.
    fn tokens(&self) -> Result<Arc<PositionTokens>, Status> {
        if let Some(tokens) = self.tokens.get() {
            return Ok(tokens.clone());
        }
        match PositionTokens::load_or_create(&self.dir) {
            Ok(tokens) => Ok(self.tokens.get_or_init(|| Arc::new(tokens)).clone()),
            Err(error) => {
                tracing::error!(%error, "cannot load the feed position key");
                Err(Status::unavailable(
                    "this node cannot serve its feed now (its position key cannot be read)",
                ))
            }
        }
    }
}

impl FederationService {
    /// The service for node `node_id`; pull streams end when `shutdown` is cancelled.
    /// Feed positions are sealed under the key kept in `store_dir` (created on the
    /// first pull when there is none).
    pub fn new(
        node_id: NodeId,
        engine: Arc<Engine>,
        shutdown: CancellationToken,
        store_dir: std::path::PathBuf,
    ) -> Self {
        Self {
            node_id,
            engine,
            shutdown,
            crls: None,
            positions: Arc::new(Positions {
                dir: store_dir,
                tokens: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Takes CRLs offered by peers through `sink` (see `PolicyReload::offer_crl`).
    pub fn with_crl_sink(mut self, sink: Arc<dyn super::admin::PolicyReload>) -> Self {
        self.crls = Some(sink);
        self
    }
}

/// The connection a pull is served on, as the feed sees it: its withdrawal.
struct Connection(ConnectionInfo);

impl Withdrawable for Connection {
    type Withdrawal = Withdrawal;

    fn withdrawal(&self) -> Option<Withdrawal> {
        self.0.withdrawal()
    }

    fn withdrawn(&self) -> impl std::future::Future<Output = Withdrawal> + Send + 'static {
        self.0.withdrawn()
    }
}

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
        // The version is the federation protocol's (how bundles travel between nodes);
        // clients speak only Intel and Admin, which did not change, so any client may ask.
        if partner.kind == crate::model::PartnerKind::Node && protocol_version != PROTOCOL_VERSION {
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
        let connection = Connection(info.clone());
        let PullRequest {
            cursor,
            follow,
            protocol_version,
            resume,
        } = request.into_inner();
        // A puller of another protocol could not read the messages it would be sent
        // (one of protocol 1 would skip parts and move its cursor past them; one of
        // protocol 2 would read positions as numbers).
        if protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "the puller speaks federation protocol {}; this node serves protocol {PROTOCOL_VERSION} only (bundles in parts, sealed feed positions): upgrade the puller",
                protocol_version.max(1)
            )));
        }
        let resume = convert::resume(resume)?;
        let tokens = self.positions.tokens()?;
        // A token that does not open is no cursor: the feed is served from the start
        // (the puller passes over what it holds), the same whatever the cause. A token
        // opens only under the partner's policy it was issued under, so one issued
        // before a change of that policy is served from the start too.
        let policy = self.engine.policy().partner_fingerprint(&partner.id);
        let cursor = tokens.open(&partner.id, &policy, &cursor).unwrap_or(0);
        // The transfer's `after` is not read: whether a transfer is continued depends
        // only on what the partner may see after its cursor (`sync::feed`).
        let resume = resume.map(
            |Resume {
                 after: _,
                 hops,
                 transfer,
                 next_part,
             }| Resume {
                after: (),
                hops,
                transfer,
                next_part,
            },
        );
        let slot = self.engine.open_stream(&partner.id)?;
        let peer = partner.id.clone();
        let feed = crate::sync::feed::serve(
            self.engine.clone(),
            FeedRequest {
                partner,
                cursor,
                policy,
                follow,
                resume,
            },
            connection,
            self.shutdown.clone(),
            move |event| match event {
                Ok(event) => event
                    .try_map(|position| {
                        tokens.seal(&peer, &position.policy, position.seq).ok_or(())
                    })
                    .map(convert::pull_response)
                    .map_err(|()| Status::internal("the system random source failed")),
                Err(end) => Err(Status::from(end)),
            },
            // The partner's stream slot is held as long as the serving loop.
            slot,
        )?;
        Ok(Response::new(Box::pin(feed)))
    }

    async fn offer_crl(
        &self,
        request: Request<super::proto::OfferCrlRequest>,
    ) -> Result<Response<super::proto::OfferCrlResponse>, Status> {
        let info = caller(&request)?;
        require_node(info)?;
        let from = info.partner.id.clone();
        let Some(sink) = self.crls.clone() else {
            return Err(Status::unimplemented(
                "this node does not take CRLs from the federation",
            ));
        };
        let super::proto::OfferCrlRequest { crl_der } = request.into_inner();
        let outcome = tokio::task::spawn_blocking(move || sink.offer_crl(&crl_der))
            .await
            .map_err(|e| Status::internal(format!("task failed: {e}")))?;
        match outcome {
            Ok(Some(issuer)) => {
                tracing::info!(peer = %from, %issuer, "CRL offered by a peer put in force");
                Ok(Response::new(super::proto::OfferCrlResponse {
                    applied: true,
                    issuer,
                }))
            }
            Ok(None) => Ok(Response::new(super::proto::OfferCrlResponse {
                applied: false,
                issuer: String::new(),
            })),
            Err(reason) => {
                tracing::warn!(peer = %from, %reason, "CRL offered by a peer refused");
                Err(Status::invalid_argument(reason))
            }
        }
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
