//! The home of every sharing decision. Nothing here does I/O, loads configuration or
//! touches TLS: a [`Policy`] is compiled from typed specs ([`PolicySpec`]), and three
//! pure functions answer every question a path can ask:
//!
//! - [`Policy::decide`]: may this item leave the node to this partner (outbound: Query,
//!   Get, Subscribe, Export, Explain, Pull)? The answer is a [`Decision`] with a typed
//!   [`Rule`], and [`Outcome::Withhold`] carries the time an embargo lifts.
//! - [`Policy::admit`] and [`Policy::admit_items`]: may a bundle pulled from a peer enter
//!   the store (inbound)? A refusal is a typed [`Refusal`].
//! - [`PageTokens`]: page tokens sealed for one caller and one query, so a token reveals
//!   nothing about items the caller may not see.
//!
//! Defaults by role, where the configuration is silent:
//! - `analyst` and `admin` clients are this node's own organisation: every marking and
//!   every type;
//! - `read_only` partners: `max_tlp` GREEN, and no type until `allow_types` names some;
//! - `peer` nodes: nothing until both `max_tlp` and `allow_types` are given.
//!
//! Default deny throughout: an unknown partner, an unnamed marking or an unnamed type
//! means the item is withheld.

mod admit;
mod decide;
mod page_token;
mod spec;

pub use admit::{Arrival, Refusal};
pub use decide::{
    Context, Decision, Held, HeldItem, MAX_REF_DEPTH, NothingHeld, Outcome, PartnerPolicy, Policy,
    READ_ONLY_MAX_TLP, Rule, Unreadable,
};
pub use page_token::{PageTokenError, PageTokens, TokenScope};
pub use spec::{DEFAULT_MAX_CLOCK_SKEW_MS, PartnerSpec, PolicySettings, PolicySpec};
