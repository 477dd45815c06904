//! Replication between nodes, both ways: serving this node's change
//! feed to a partner ([`feed`]) and pulling each configured peer's ([`puller`]), with the
//! link state reported to operators ([`links`]). Built on the engine only: no gRPC,
//! generated protocol or transport type here; the service layer adapts both ends.

pub mod feed;
pub mod links;
pub mod puller;

pub use feed::{FeedEnd, FeedEvent, FeedRequest, Withdrawable};
pub use links::{LinkState, Links};
pub use puller::{
    Dialer, Link, MAX_CERTIFICATE_RESPONSE_BYTES, MAX_PULL_MESSAGE_BYTES, Peer, PeerError,
    PeerFeed, run_link,
};
