//! The pull loop's [`Dialer`] and [`Peer`] over gRPC: `Federation.Pull` and
//! `Federation.GetCertificates` on a mutually authenticated channel to the peer, with
//! their size limits, and statuses turned into [`PeerError`]s. Owns only that
//! translation; the loop itself and every decision about what arrives live in `sync`.

use std::sync::Arc;

use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::convert;
use super::proto::federation_client::FederationClient;
use super::proto::{GetCertificatesRequest, PullRequest};
use crate::model::NodeId;
use crate::sync::{
    Dialer, MAX_CERTIFICATE_RESPONSE_BYTES, MAX_PULL_MESSAGE_BYTES, Peer, PeerError, PeerFeed,
    Resume,
};
use crate::transport::connect::{Keepalive, connect_counting};
use crate::wire::MAX_FEDERATION_REQUEST_BYTES;

/// Connects to one peer over mutual TLS, checking it is exactly the node meant.
#[derive(Clone)]
pub struct GrpcDialer {
    tls: Arc<rustls::ClientConfig>,
    address: String,
    peer: NodeId,
    keepalive: Keepalive,
}

impl GrpcDialer {
    /// Dials `peer` at `address` (`host:port`) with this node's client configuration,
    /// checking each connection for life as `keepalive` says: a peer gone silent ends
    /// the pull with an error, and the loop connects again.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        address: String,
        peer: NodeId,
        keepalive: Keepalive,
    ) -> Self {
        Self {
            tls,
            address,
            peer,
            keepalive,
        }
    }
}

impl Dialer for GrpcDialer {
    type Peer = GrpcPeer;

    async fn dial(&self) -> Result<GrpcPeer, PeerError> {
        let channel = connect_counting(
            self.tls.clone(),
            &self.address,
            &self.peer,
            None,
            self.keepalive,
        )
        .await
        .map_err(|e| PeerError::Failed(e.to_string()))?;
        Ok(GrpcPeer {
            certificates: FederationClient::new(channel.clone())
                .max_decoding_message_size(MAX_CERTIFICATE_RESPONSE_BYTES)
                .max_encoding_message_size(MAX_CERTIFICATE_RESPONSE_BYTES),
            federation: FederationClient::new(channel)
                .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
                .max_decoding_message_size(MAX_PULL_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_FEDERATION_REQUEST_BYTES),
        })
    }
}

/// One open channel to a peer; dropping it closes the connection.
pub struct GrpcPeer {
    /// For `GetCertificates`, whose answers are read up to
    /// [`MAX_CERTIFICATE_RESPONSE_BYTES`].
    certificates: FederationClient<Channel>,
    /// For `Pull` (compressed answers accepted).
    federation: FederationClient<Channel>,
}

impl Peer for GrpcPeer {
    async fn pull(
        &mut self,
        cursor: Vec<u8>,
        resume: Option<Resume<Vec<u8>>>,
    ) -> Result<PeerFeed, PeerError> {
        let stream = self
            .federation
            .pull(PullRequest {
                cursor,
                follow: true,
                protocol_version: super::PROTOCOL_VERSION,
                resume: convert::resume_request(resume),
            })
            .await
            .map_err(|s| PeerError::Failed(status_text(&s)))?
            .into_inner();
        // Messages without an event carry nothing; one of another protocol ends the
        // stream with its error.
        Ok(Box::pin(stream.filter_map(|message| {
            match message {
                Ok(message) => convert::feed_event(message)
                    .map_err(PeerError::Failed)
                    .transpose(),
                Err(status) => Some(Err(PeerError::Failed(status_text(&status)))),
            }
        })))
    }

    async fn certificates(&mut self, fingerprint: [u8; 32]) -> Result<Vec<Vec<u8>>, PeerError> {
        match self
            .certificates
            .get_certificates(GetCertificatesRequest {
                sha256: vec![fingerprint.to_vec()],
            })
            .await
        {
            Ok(answer) => Ok(answer
                .into_inner()
                .chains
                .into_iter()
                .filter_map(|chain| chain.der.into_iter().next())
                .collect()),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
                ) =>
            {
                Err(PeerError::TooLarge)
            }
            Err(status) => Err(PeerError::Failed(status_text(&status))),
        }
    }
}

/// A status with its transport cause, on one line.
fn status_text(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(cause) => format!(
            "{}: {}",
            status.message(),
            crate::transport::connect::error_chain(cause)
        ),
        None => status.message().to_owned(),
    }
}
