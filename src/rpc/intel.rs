//! `entente.v1.Intel`: the client service (publish, query, get, subscribe, export).

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{caller, require_client, require_writer};
use super::proto::intel_server::Intel;
use super::proto::{
    ExportChunk, ExportRequest, GetRequest, GetResponse, PublishRequest, PublishResponse,
    QueryRequest, QueryResponse, StoredItem, SubscribeRequest,
};

/// The Intel service of one node.
#[derive(Clone, Debug, Default)]
pub struct IntelService;

fn not_yet(method: &str) -> Status {
    Status::unimplemented(format!("{method} is not available in this version"))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Intel for IntelService {
    async fn publish(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<PublishResponse>, Status> {
        require_writer(caller(&request)?)?;
        Err(not_yet("Publish"))
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        require_client(caller(&request)?)?;
        Err(not_yet("Query"))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        require_client(caller(&request)?)?;
        Err(not_yet("Get"))
    }

    type SubscribeStream = BoxStream<StoredItem>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        require_client(caller(&request)?)?;
        Err(not_yet("Subscribe"))
    }

    type ExportStream = BoxStream<ExportChunk>;

    async fn export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        require_client(caller(&request)?)?;
        Err(not_yet("Export"))
    }
}
