//! The domain vocabulary: node and client identities, roles, items (indicators and
//! revocations), TLP markings and value normalisation. No I/O, no tonic, no sled here.

mod bundle;
mod encoding;
mod identity;
pub mod item;
mod value;

pub use bundle::{BundleId, Distribution, MAX_RECIPIENTS};
pub use identity::{InvalidNodeId, NodeId, Partner, PartnerKind, Role};
pub use item::{
    Indicator, IndicatorType, InvalidValue, Item, ItemId, ItemKind, ModelError, Revocation, Tlp,
};
pub use value::{MAX_KILL_CHAIN_PHASES, MAX_TAGS, detect_type, normalise};
