//! Replication between nodes, both ways: serving this node's change
//! feed to a partner ([`feed`]) and pulling each configured peer's ([`puller`]), bundles
//! crossing in bounded parts ([`parts`]), feed positions leaving the node only sealed
//! ([`positions`]), within the budgets of [`limits`], with the
//! link state reported to operators ([`links`]). Built on the engine only: no gRPC,
//! generated protocol or transport type here; the service layer adapts both ends.

pub mod feed;
pub mod limits;
pub mod links;
pub mod parts;
pub mod positions;
pub mod puller;

pub use feed::{FeedEnd, FeedEvent, FeedRequest, Position, Withdrawable};
pub use limits::MAX_PULL_MESSAGE_BYTES;
pub use links::{LinkState, Links};
pub use parts::{Part, Resume};
pub use positions::PositionTokens;
pub use puller::{
    Dialer, Link, MAX_CERTIFICATE_RESPONSE_BYTES, Peer, PeerError, PeerFeed, run_link,
};
