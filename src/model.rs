//! The domain vocabulary: node and client identities, roles, items (indicators and
//! revocations), TLP markings and value normalisation. No I/O, no tonic, no sled here.

mod identity;
pub mod item;
mod value;

pub use identity::{InvalidNodeId, NodeId, Role};
pub use item::{
    Indicator, IndicatorType, InvalidValue, Item, ItemId, ItemKind, ModelError, Revocation, Tlp,
};
pub use value::{detect_type, normalise};
