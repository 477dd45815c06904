//! The domain vocabulary: node and client identities, roles, items (indicators and
//! revocations), TLP markings and value normalisation. No I/O, no tonic, no sled here.

mod bundle;
mod encoding;
mod identity;
pub mod item;
pub mod observables;
pub mod pattern_syntax;
mod properties;
mod value;

pub use bundle::{BundleId, Distribution, MAX_RECIPIENTS};
pub use identity::{InvalidNodeId, NodeId, Partner, PartnerKind, Role};
pub use item::{
    ContextObject, Indicator, IndicatorType, InvalidValue, Item, ItemId, ItemKind, ModelError,
    PROJECT_IDENTITY_ID, Revocation, Tlp, is_invisible, origin_identity_id, uuid_v4_form,
};
pub use properties::{Holder, MAX_PROPERTIES_BYTES, StixProperties, phases_kept_as_given};
pub use value::{
    MAX_KILL_CHAIN_PHASES, MAX_TAGS, MIN_IPV4_PREFIX, MIN_IPV6_PREFIX, check_tags, detect_type,
    normalise, normalise_typed,
};
