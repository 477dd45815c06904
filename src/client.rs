//! Calling a node as a client or peer: the connection and the calls the CLI makes.

use std::sync::Arc;

use crate::model::NodeId;
use crate::rpc::proto::federation_client::FederationClient;
use crate::rpc::proto::{HelloRequest, HelloResponse};
use crate::rpc::{CAPABILITIES, PROTOCOL_VERSION};
use crate::transport::{ConnectError, connect};

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
