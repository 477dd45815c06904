//! `entente.v1.Admin`: policy reload and explain, and the disclosure ledger, for the
//! node's operator (its own certificate) and `admin` clients.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{caller, require_admin};
use super::proto::admin_server::Admin;
use super::proto::{
    ExplainRequest, ExplainResponse, LedgerRecord, LedgerShowRequest, LedgerVerifyRequest,
    LedgerVerifyResponse, ReloadPolicyRequest, ReloadPolicyResponse, StoredItem as ProtoStoredItem,
};
use crate::engine::Engine;
use crate::model::{ItemId, NodeId};
use crate::policy::Policy;

/// Re-reads the configuration and puts the new policy in force.
pub trait PolicyReload: Send + Sync {
    /// Reloads; returns the policy now in force, or why the new configuration was refused
    /// (the old policy then stays in force).
    fn reload(&self) -> Result<Arc<Policy>, String>;
}

/// The Admin service of one node.
pub struct AdminService {
    engine: Arc<Engine>,
    reload: Arc<dyn PolicyReload>,
}

impl AdminService {
    /// The service over `engine`, reloading through `reload`.
    pub fn new(engine: Arc<Engine>, reload: Arc<dyn PolicyReload>) -> Self {
        Self { engine, reload }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn reload_policy(
        &self,
        request: Request<ReloadPolicyRequest>,
    ) -> Result<Response<ReloadPolicyResponse>, Status> {
        require_admin(caller(&request)?)?;
        let reload = self.reload.clone();
        let policy = tokio::task::spawn_blocking(move || reload.reload())
            .await
            .map_err(|e| Status::internal(format!("task failed: {e}")))?
            .map_err(|problem| {
                Status::failed_precondition(format!(
                    "the configuration was refused; the previous policy stays in force: {problem}"
                ))
            })?;
        Ok(Response::new(ReloadPolicyResponse {
            policy_hash: hex(&policy.hash()),
            description: policy.describe(),
        }))
    }

    async fn explain(
        &self,
        request: Request<ExplainRequest>,
    ) -> Result<Response<ExplainResponse>, Status> {
        require_admin(caller(&request)?)?;
        let ExplainRequest { partner, item_id } = request.into_inner();
        let partner =
            NodeId::new(&partner).map_err(|e| Status::invalid_argument(format!("partner: {e}")))?;
        let id = ItemId::parse(&item_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let Some((stored, decision)) = self.engine.explain(&partner, &id)? else {
            return Err(Status::not_found(format!("{id} is not held by this node")));
        };
        Ok(Response::new(ExplainResponse {
            allow: decision.allow,
            rule: decision.rule,
            item: Some(ProtoStoredItem::from(&stored)),
        }))
    }

    type LedgerShowStream = BoxStream<LedgerRecord>;

    async fn ledger_show(
        &self,
        request: Request<LedgerShowRequest>,
    ) -> Result<Response<Self::LedgerShowStream>, Status> {
        require_admin(caller(&request)?)?;
        Err(Status::unimplemented(
            "the disclosure ledger is not available in this version",
        ))
    }

    async fn ledger_verify(
        &self,
        request: Request<LedgerVerifyRequest>,
    ) -> Result<Response<LedgerVerifyResponse>, Status> {
        require_admin(caller(&request)?)?;
        Err(Status::unimplemented(
            "the disclosure ledger is not available in this version",
        ))
    }
}
