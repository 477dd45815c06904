//! `entente.v1.Federation`: the node-to-node service.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::{caller, require_node};
use super::proto::federation_server::Federation;
use super::proto::{
    GetCertificatesRequest, GetCertificatesResponse, HelloRequest, HelloResponse, PullRequest,
    PullResponse,
};
use super::{CAPABILITIES, PROTOCOL_VERSION};
use crate::model::NodeId;

/// The Federation service of one node.
#[derive(Clone, Debug)]
pub struct FederationService {
    node_id: NodeId,
}

impl FederationService {
    /// The service for node `node_id`.
    pub fn new(node_id: NodeId) -> Self {
        Self { node_id }
    }
}

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
        require_node(caller(&request)?)?;
        Err(Status::unimplemented(
            "Pull is not available in this version",
        ))
    }

    async fn get_certificates(
        &self,
        request: Request<GetCertificatesRequest>,
    ) -> Result<Response<GetCertificatesResponse>, Status> {
        require_node(caller(&request)?)?;
        Err(Status::unimplemented(
            "GetCertificates is not available in this version",
        ))
    }
}
