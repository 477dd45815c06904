//! Calling a node as a client or peer: the connection and the calls the CLI makes.

use std::sync::Arc;

use crate::config::ClientSettings;
use crate::model::NodeId;
use crate::rpc::proto::federation_client::FederationClient;
use crate::rpc::proto::intel_client::IntelClient;
use crate::rpc::proto::{
    GetRequest, HelloRequest, HelloResponse, ItemFilter, PublishRequest, PublishResponse,
    QueryRequest, QueryResponse, StoredItem, SubscribeRequest,
};
use crate::rpc::{CAPABILITIES, PROTOCOL_VERSION};
use crate::transport::{ConnectError, connect};
use crate::wire::MAX_MESSAGE_BYTES;

/// Why a call to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be established.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The node answered with an error.
    #[error("{node} answered {code:?}: {message}")]
    Status {
        /// The node called.
        node: NodeId,
        /// The gRPC status code.
        code: tonic::Code,
        /// The node's message.
        message: String,
    },
}

/// A connection to one node, authenticated both ways.
pub struct NodeClient {
    node: NodeId,
    own_id: NodeId,
    channel: tonic::transport::Channel,
}

impl NodeClient {
    /// Connects to node `node` at `address`, presenting `own_id`'s certificate.
    pub async fn connect(
        tls: Arc<rustls::ClientConfig>,
        own_id: &NodeId,
        address: &str,
        node: &NodeId,
    ) -> Result<Self, ClientError> {
        let channel = connect(tls, address, node).await?;
        Ok(Self {
            node: node.clone(),
            own_id: own_id.clone(),
            channel,
        })
    }

    /// Connects as described by a client (or node) configuration.
    pub async fn connect_with(settings: &ClientSettings) -> Result<Self, ClientError> {
        let tls = settings
            .tls
            .client_config()
            .map_err(|e| ClientError::Status {
                node: settings.node_id.clone(),
                code: tonic::Code::InvalidArgument,
                message: e.to_string(),
            })?;
        Self::connect(tls, &settings.id, &settings.node_address, &settings.node_id).await
    }

    /// Another handle on the same connection.
    pub fn clone_channel(&self) -> Self {
        Self {
            node: self.node.clone(),
            own_id: self.own_id.clone(),
            channel: self.channel.clone(),
        }
    }

    /// The node this client talks to.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    fn intel(&self) -> IntelClient<tonic::transport::Channel> {
        IntelClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Publishes the bundles the stream yields (one bundle per message); answers
    /// once the node has made them durable.
    pub async fn publish(
        &self,
        requests: impl tokio_stream::Stream<Item = PublishRequest> + Send + 'static,
    ) -> Result<PublishResponse, ClientError> {
        Ok(self
            .intel()
            .publish(requests)
            .await
            .map_err(|s| self.status(s))?
            .into_inner())
    }

    /// One page of a query.
    pub async fn query(
        &self,
        filter: ItemFilter,
        page_size: u32,
        page_token: Vec<u8>,
    ) -> Result<QueryResponse, ClientError> {
        Ok(self
            .intel()
            .query(QueryRequest {
                filter: Some(filter),
                page_size,
                page_token,
            })
            .await
            .map_err(|s| self.status(s))?
            .into_inner())
    }

    /// One item by id, with provenance; `None` when absent or not visible.
    pub async fn get(&self, id: &str) -> Result<Option<StoredItem>, ClientError> {
        match self.intel().get(GetRequest { id: id.to_owned() }).await {
            Ok(response) => Ok(response.into_inner().item),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(self.status(status)),
        }
    }

    /// Items as they are accepted, matching `filter`.
    pub async fn subscribe(
        &self,
        filter: ItemFilter,
    ) -> Result<tonic::Streaming<StoredItem>, ClientError> {
        Ok(self
            .intel()
            .subscribe(SubscribeRequest {
                filter: Some(filter),
            })
            .await
            .map_err(|s| self.status(s))?
            .into_inner())
    }

    fn admin(&self) -> crate::rpc::proto::admin_client::AdminClient<tonic::transport::Channel> {
        crate::rpc::proto::admin_client::AdminClient::new(self.channel.clone())
    }

    /// Asks the node to reload its configuration's policy.
    pub async fn reload_policy(
        &self,
    ) -> Result<crate::rpc::proto::ReloadPolicyResponse, ClientError> {
        Ok(self
            .admin()
            .reload_policy(crate::rpc::proto::ReloadPolicyRequest {})
            .await
            .map_err(|s| self.status(s))?
            .into_inner())
    }

    /// The node's decision for one stored item and one partner.
    pub async fn explain(
        &self,
        partner: &str,
        item_id: &str,
    ) -> Result<crate::rpc::proto::ExplainResponse, ClientError> {
        Ok(self
            .admin()
            .explain(crate::rpc::proto::ExplainRequest {
                partner: partner.to_owned(),
                item_id: item_id.to_owned(),
            })
            .await
            .map_err(|s| self.status(s))?
            .into_inner())
    }

    /// Ledger records, oldest first.
    pub async fn ledger_show(
        &self,
        request: crate::rpc::proto::LedgerShowRequest,
    ) -> Result<tonic::Streaming<crate::rpc::proto::LedgerRecord>, ClientError> {
        Ok(self
            .admin()
            .ledger_show(request)
            .await
            .map_err(|s| self.status(s))?
            .into_inner())
    }

    /// Whether the node's store can write, and how its ledger's retention stands.
    pub async fn store_state(&self) -> Result<crate::rpc::proto::StoreStateResponse, ClientError> {
        Ok(self
            .admin()
            .store_state(crate::rpc::proto::StoreStateRequest {})
            .await
            .map_err(|s| self.status(s))?
            .into_inner())
    }

    /// The node's resource limits and their refusals.
    pub async fn limits(&self) -> Result<crate::rpc::proto::LimitsResponse, ClientError> {
        Ok(self
            .admin()
            .limits(crate::rpc::proto::LimitsRequest {})
            .await
            .map_err(|s| self.status(s))?
            .into_inner())
    }

    /// The certificates whose expiry matters to the node (operator and admin clients).
    pub async fn certificates(
        &self,
    ) -> Result<crate::rpc::proto::CertificatesResponse, ClientError> {
        Ok(self
            .admin()
            .certificates(crate::rpc::proto::CertificatesRequest {})
            .await
            .map_err(|s| self.status(s))?
            .into_inner())
    }

    /// Puts a CRL (DER) in force on the node, which offers it on to its peers (operator
    /// and admin clients). Returns whether the node took it (false: it had it already).
    pub async fn apply_crl(&self, crl_der: Vec<u8>) -> Result<bool, ClientError> {
        Ok(self
            .admin()
            .apply_crl(crate::rpc::proto::OfferCrlRequest { crl_der })
            .await
            .map_err(|s| self.status(s))?
            .into_inner()
            .applied)
    }

    /// Offers a CRL (DER) to a peer node. Returns whether it took it.
    pub async fn offer_crl(&self, crl_der: Vec<u8>) -> Result<bool, ClientError> {
        Ok(FederationClient::new(self.channel.clone())
            .offer_crl(crate::rpc::proto::OfferCrlRequest { crl_der })
            .await
            .map_err(|s| self.status(s))?
            .into_inner()
            .applied)
    }

    /// The node's external feeds.
    pub async fn feeds(&self) -> Result<crate::rpc::proto::FeedsResponse, ClientError> {
        Ok(self
            .admin()
            .feeds(crate::rpc::proto::FeedsRequest {})
            .await
            .map_err(|s| self.status(s))?
            .into_inner())
    }

    /// The node's replication links.
    pub async fn links(&self) -> Result<crate::rpc::proto::LinksResponse, ClientError> {
        Ok(self
            .admin()
            .links(crate::rpc::proto::LinksRequest {})
            .await
            .map_err(|s| self.status(s))?
            .into_inner())
    }

    /// Walks the ledger's hash chain.
    pub async fn ledger_verify(
        &self,
    ) -> Result<crate::rpc::proto::LedgerVerifyResponse, ClientError> {
        Ok(self
            .admin()
            .ledger_verify(crate::rpc::proto::LedgerVerifyRequest {})
            .await
            .map_err(|s| self.status(s))?
            .into_inner())
    }

    /// Everything the node lets this client see that matches `filter`, as STIX objects.
    pub async fn export(
        &self,
        filter: ItemFilter,
    ) -> Result<tonic::Streaming<crate::rpc::proto::ExportChunk>, ClientError> {
        Ok(self
            .intel()
            .export(crate::rpc::proto::ExportRequest {
                filter: Some(filter),
            })
            .await
            .map_err(|s| self.status(s))?
            .into_inner())
    }

    /// Turns a status from a stream into a client error.
    pub fn stream_error(&self, status: tonic::Status) -> ClientError {
        self.status(status)
    }

    /// The underlying channel, for generated clients.
    pub fn channel(&self) -> tonic::transport::Channel {
        self.channel.clone()
    }

    fn status(&self, status: tonic::Status) -> ClientError {
        ClientError::Status {
            node: self.node.clone(),
            code: status.code(),
            message: match std::error::Error::source(&status) {
                Some(cause) => format!(
                    "{}: {}",
                    status.message(),
                    crate::transport::connect::error_chain(cause)
                ),
                None => status.message().to_owned(),
            },
        }
    }

    /// Calls `Federation.Hello`.
    pub async fn hello(&self) -> Result<HelloResponse, ClientError> {
        let mut client = FederationClient::new(self.channel.clone());
        let response = client
            .hello(HelloRequest {
                node_id: self.own_id.to_string(),
                protocol_version: PROTOCOL_VERSION,
                capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
            })
            .await
            .map_err(|s| self.status(s))?;
        Ok(response.into_inner())
    }
}
