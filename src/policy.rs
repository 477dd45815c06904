//! Sharing policy (DESIGN section 6): one decision function, [`decide`], that every
//! outbound path calls before an item leaves the node. No I/O here.
//!
//! The rules in force at this stage, per partner:
//! - a `read_only` client receives items up to TLP:GREEN and nothing above;
//! - `analyst` and `admin` clients, and the node's own operator, receive everything
//!   the node holds (they are the node's organisation);
//! - a peer node receives nothing through the client paths;
//! - an identity that is not configured is refused at the TLS handshake and never
//!   reaches this function.

use crate::model::{Item, Partner, PartnerKind, Role, Tlp};

/// The highest marking a `read_only` partner may receive.
pub const READ_ONLY_MAX_TLP: Tlp = Tlp::Green;

/// The outcome of [`decide`], with the rule that made it in words an operator reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the item may be disclosed to the partner.
    pub allow: bool,
    /// The rule that decided.
    pub rule: String,
}

impl Decision {
    fn allow(rule: impl Into<String>) -> Self {
        Self {
            allow: true,
            rule: rule.into(),
        }
    }

    fn withhold(rule: impl Into<String>) -> Self {
        Self {
            allow: false,
            rule: rule.into(),
        }
    }
}

/// Decides whether `item` may be disclosed to `partner`.
pub fn decide(partner: &Partner, item: &Item) -> Decision {
    match (partner.kind, partner.role) {
        (PartnerKind::Local, _) => Decision::allow("the node's own operator sees everything"),
        (PartnerKind::Client, Role::Analyst | Role::Admin) => Decision::allow(format!(
            "{} client {} belongs to this node's organisation",
            partner.role, partner.id
        )),
        (PartnerKind::Client, Role::ReadOnly) if item.tlp <= READ_ONLY_MAX_TLP => {
            Decision::allow(format!(
                "{} is within max_tlp {} for read_only client {}",
                item.tlp, READ_ONLY_MAX_TLP, partner.id
            ))
        }
        (PartnerKind::Client, Role::ReadOnly) => Decision::withhold(format!(
            "{} is above max_tlp {} for read_only client {}",
            item.tlp, READ_ONLY_MAX_TLP, partner.id
        )),
        (PartnerKind::Client, Role::Peer) | (PartnerKind::Node, _) => Decision::withhold(format!(
            "{} is a peer node; peers receive data only through federation pull",
            partner.id
        )),
    }
}
