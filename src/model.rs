//! The domain vocabulary: node and client identities, roles, and (in later
//! stages) items, markings and bundles. No I/O, no tonic, no sled here.

mod identity;

pub use identity::{InvalidNodeId, NodeId, Role};
