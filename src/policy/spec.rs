//! The typed input of a policy: what the configuration says about each partner, before
//! role defaults. Built by `config` from the TOML file, or directly by tests.

use std::collections::BTreeMap;

use crate::model::{IndicatorType, NodeId, Partner, Tlp};

/// Default for [`PolicySpec::max_clock_skew_ms`]: five minutes.
pub const DEFAULT_MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// The sharing-policy fields of a `[[peer]]` or `[[client]]`, as written (defaults by
/// role are applied when the policy is compiled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySettings {
    /// Highest TLP marking the partner may receive.
    pub max_tlp: Option<Tlp>,
    /// Indicator types it may receive; `None` when not named; `["*"]` gives every type.
    pub allow_types: Option<Vec<IndicatorType>>,
    /// Types it never receives.
    pub deny_types: Vec<IndicatorType>,
    /// When non-empty, an item must carry one of these tags.
    pub allow_tags: Vec<String>,
    /// An item with one of these tags is withheld.
    pub deny_tags: Vec<String>,
    /// May items this node did not originate be passed on to this partner (nodes only).
    pub forward_third_party: bool,
    /// Delay before newly accepted items become visible to the partner, ms.
    pub embargo_ms: i64,
}

/// One partner and what its agreement says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerSpec {
    /// Who: id, node or client, role.
    pub partner: Partner,
    /// Its policy fields as written.
    pub settings: PolicySettings,
}

/// Everything a [`crate::policy::Policy`] is compiled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// This node's id.
    pub node: NodeId,
    /// Every configured peer and client.
    pub partners: Vec<PartnerSpec>,
    /// Sharing groups by name.
    pub groups: BTreeMap<String, Vec<NodeId>>,
    /// How far in the future an item's `modified` time (or a bundle's creation time) may
    /// lie before it is refused, ms.
    pub max_clock_skew_ms: i64,
    /// The `source:<name>` tags of the feeds whose items count as third-party for rule
    /// 3: this node signs them, but did not write them, so they go to partner nodes
    /// only as what another node sent would (GREEN or CLEAR, `forward_third_party`).
    pub feeds: Vec<String>,
}

impl PolicySpec {
    /// A spec for node `node` with no partners, no groups and the default clock skew.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            partners: Vec::new(),
            groups: BTreeMap::new(),
            max_clock_skew_ms: DEFAULT_MAX_CLOCK_SKEW_MS,
            feeds: Vec::new(),
        }
    }

    /// Adds a partner (builder style, for tests and tools).
    pub fn with(mut self, partner: Partner, settings: PolicySettings) -> Self {
        self.partners.push(PartnerSpec { partner, settings });
        self
    }
}
