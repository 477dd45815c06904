//! Sharing policy (DESIGN section 6): compiled once from the configuration, and one
//! decision function, [`Policy::decide`], that every outbound path calls before an
//! item leaves the node. No I/O here.
//!
//! Defaults by role, where the configuration is silent:
//! - `analyst` and `admin` clients are this node's own organisation: every marking and
//!   every type;
//! - `read_only` partners: `max_tlp` GREEN, and no type until `allow_types` names some;
//! - `peer` nodes: nothing until both `max_tlp` and `allow_types` are given.
//!
//! Default deny throughout: an unknown partner, an unnamed marking or an unnamed type
//! means the item is withheld.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::config::{Config, PolicySettings};
use crate::model::{Distribution, IndicatorType, Item, NodeId, PartnerKind, Role, Tlp};

/// The highest marking a `read_only` partner receives unless its policy says less.
pub const READ_ONLY_MAX_TLP: Tlp = Tlp::Green;

/// The outcome of [`Policy::decide`], with the rule that made it in words an operator reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the item may be disclosed to the partner.
    pub allow: bool,
    /// The rule that decided.
    pub rule: String,
}

impl Decision {
    fn allow(rule: String) -> Self {
        Self { allow: true, rule }
    }

    fn withhold(rule: String) -> Self {
        Self { allow: false, rule }
    }
}

/// What is known about the item's place on this node when deciding.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    /// The bundle's origin.
    pub origin: &'a NodeId,
    /// `hop(N, i)`: the fewest transfers by which this node holds the item (0 at the origin).
    pub hops: u32,
    /// The bundle's signed distribution, when known (required for peer nodes).
    pub distribution: Option<&'a Distribution>,
    /// When this node accepted the item, ms.
    pub accepted_ms: i64,
    /// Now, ms.
    pub now_ms: i64,
    /// Whether this is the latest version of its id that the node holds.
    pub latest: bool,
    /// The client asked for expired indicators too (ignored for nodes).
    pub include_expired: bool,
}

/// One partner's compiled policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartnerPolicy {
    /// The partner.
    pub id: NodeId,
    /// Node or client.
    pub kind: PartnerKind,
    /// Its role.
    pub role: Role,
    /// Highest marking, after role defaults; `None` receives nothing.
    pub max_tlp: Option<Tlp>,
    /// Types it may receive, after role defaults; `None` receives nothing.
    pub allow_types: Option<Vec<IndicatorType>>,
    /// Types it never receives.
    pub deny_types: Vec<IndicatorType>,
    /// When non-empty, an item needs one of these tags.
    pub allow_tags: Vec<String>,
    /// Tags that withhold an item.
    pub deny_tags: Vec<String>,
    /// Whether items originated elsewhere may be passed on (nodes only).
    pub forward_third_party: bool,
    /// Embargo, ms.
    pub embargo_ms: i64,
}

impl PartnerPolicy {
    fn compile(id: &NodeId, kind: PartnerKind, role: Role, s: &PolicySettings) -> Self {
        let own_org = matches!(role, Role::Analyst | Role::Admin);
        let max_tlp = match (s.max_tlp, role) {
            (Some(t), _) => Some(t),
            (None, Role::ReadOnly) => Some(READ_ONLY_MAX_TLP),
            (None, _) if own_org => Some(Tlp::Red),
            (None, _) => None,
        };
        let allow_types = match &s.allow_types {
            Some(types) => Some(types.clone()),
            None if own_org => Some(IndicatorType::ALL.to_vec()),
            None => None,
        };
        Self {
            id: id.clone(),
            kind,
            role,
            max_tlp,
            allow_types,
            deny_types: s.deny_types.clone(),
            allow_tags: s.allow_tags.clone(),
            deny_tags: s.deny_tags.clone(),
            forward_third_party: kind == PartnerKind::Node && s.forward_third_party,
            embargo_ms: s.embargo_ms,
        }
    }

    fn who(&self) -> String {
        match self.kind {
            PartnerKind::Node => format!("{} node {}", self.role, self.id),
            PartnerKind::Client => format!("{} client {}", self.role, self.id),
            PartnerKind::Local => format!("the node's operator {}", self.id),
        }
    }

    /// Whether this partner can receive anything at all.
    pub fn receives_anything(&self) -> bool {
        self.max_tlp.is_some()
            && self
                .allow_types
                .as_ref()
                .is_some_and(|t| t.iter().any(|ty| !self.deny_types.contains(ty)))
    }
}

/// The compiled sharing policy of a node.
#[derive(Clone, Debug)]
pub struct Policy {
    node: NodeId,
    partners: HashMap<NodeId, PartnerPolicy>,
    groups: BTreeMap<String, Vec<NodeId>>,
    hash: [u8; 32],
}

fn ms_to_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn duration_text(ms: i64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms => format!("{}s", ms / 1000),
    }
}

impl Policy {
    /// Compiles the policy of a validated configuration.
    pub fn compile(config: &Config) -> Self {
        let mut partners = HashMap::new();
        for p in &config.peers {
            partners.insert(
                p.id.clone(),
                PartnerPolicy::compile(&p.id, PartnerKind::Node, p.role, &p.policy),
            );
        }
        for c in &config.clients {
            partners.insert(
                c.id.clone(),
                PartnerPolicy::compile(&c.id, PartnerKind::Client, c.role, &c.policy),
            );
        }
        let mut policy = Self {
            node: config.node.id.clone(),
            partners,
            groups: config.groups.clone(),
            hash: [0; 32],
        };
        policy.hash = crate::crypto::sha256(policy.describe().as_bytes());
        policy
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// SHA-256 of the compiled policy's description: names the policy version in the
    /// disclosure ledger.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// A partner's compiled policy.
    pub fn partner(&self, id: &NodeId) -> Option<&PartnerPolicy> {
        self.partners.get(id)
    }

    /// A fingerprint of one partner's compiled policy (all zero for an unknown partner):
    /// when it changes, the partner's feed is replayed from the start so it receives
    /// what it may now see.
    pub fn partner_fingerprint(&self, id: &NodeId) -> [u8; 32] {
        match self.partners.get(id) {
            Some(p) => crate::crypto::sha256(format!("{p:?}").as_bytes()),
            None => [0; 32],
        }
    }

    /// The members of a sharing group.
    pub fn group(&self, name: &str) -> Option<&[NodeId]> {
        self.groups.get(name).map(Vec::as_slice)
    }

    /// Decides whether `item` may be disclosed to `partner` (DESIGN section 6.1).
    pub fn decide(&self, partner: &NodeId, item: &Item, ctx: &Context<'_>) -> Decision {
        if partner == &self.node {
            return Decision::allow(format!("allowed: {partner} is this node's own operator"));
        }
        let Some(p) = self.partners.get(partner) else {
            return Decision::withhold(format!(
                "withheld: {partner} is not configured on this node (default deny)"
            ));
        };
        let who = p.who();
        // Rule 2: the partner's policy allows the item.
        let Some(max_tlp) = p.max_tlp else {
            return Decision::withhold(format!(
                "withheld: the policy for {who} names no max_tlp (default deny)"
            ));
        };
        if item.tlp > max_tlp {
            return Decision::withhold(format!(
                "withheld: {} is above max_tlp {} for {who}",
                item.tlp,
                max_tlp.as_str()
            ));
        }
        let ty = item.indicator_type();
        match &p.allow_types {
            None => {
                return Decision::withhold(format!(
                    "withheld: the policy for {who} names no allow_types (default deny)"
                ));
            }
            Some(types) if !types.contains(&ty) => {
                return Decision::withhold(format!(
                    "withheld: type {ty} is not in allow_types for {who}"
                ));
            }
            Some(_) => {}
        }
        if p.deny_types.contains(&ty) {
            return Decision::withhold(format!("withheld: type {ty} is in deny_types for {who}"));
        }
        if !p.allow_tags.is_empty() && !item.tags.iter().any(|t| p.allow_tags.contains(t)) {
            return Decision::withhold(format!(
                "withheld: the item has none of the allow_tags [{}] of {who}",
                p.allow_tags.join(", ")
            ));
        }
        if let Some(tag) = item.tags.iter().find(|t| p.deny_tags.contains(t)) {
            return Decision::withhold(format!("withheld: tag {tag} is in deny_tags for {who}"));
        }
        if p.kind == PartnerKind::Node {
            // Rule 3: what came from another node is passed on only if allowed and GREEN or CLEAR.
            if ctx.origin != &self.node {
                if !p.forward_third_party {
                    return Decision::withhold(format!(
                        "withheld: the item originated at {}, and forward_third_party is false for {who}",
                        ctx.origin
                    ));
                }
                if item.tlp > Tlp::Green {
                    return Decision::withhold(format!(
                        "withheld: {} received from another node stays with this organisation; only GREEN and CLEAR are passed on",
                        item.tlp
                    ));
                }
            }
            // Rule 4: distribution.
            let Some(distribution) = ctx.distribution else {
                return Decision::withhold(
                    "withheld: the bundle's distribution is unknown (default deny)".to_owned(),
                );
            };
            if let Some(max_hops) = distribution.max_hops {
                if u64::from(ctx.hops) + 1 > u64::from(max_hops) {
                    return Decision::withhold(format!(
                        "withheld: max_hops {max_hops} is reached (this node holds the item at hop {})",
                        ctx.hops
                    ));
                }
            }
            if !distribution.admits(partner) {
                return Decision::withhold(format!(
                    "withheld: {partner} is not in the bundle's recipient list"
                ));
            }
        }
        // Rule 5: embargo.
        if p.embargo_ms > 0 && ctx.now_ms - ctx.accepted_ms < p.embargo_ms {
            return Decision::withhold(format!(
                "withheld: the embargo of {} for {who} has not passed (visible from {})",
                duration_text(p.embargo_ms),
                ms_to_text(ctx.accepted_ms.saturating_add(p.embargo_ms))
            ));
        }
        // Rule 6: latest version, not expired.
        if !ctx.latest {
            return Decision::withhold("withheld: a newer version of the item is held".to_owned());
        }
        // Only a client may ask for expired indicators; a node never receives them.
        let waive_expiry = ctx.include_expired && p.kind == PartnerKind::Client;
        if !waive_expiry && item.is_expired(ctx.now_ms) {
            return Decision::withhold("withheld: the indicator has expired".to_owned());
        }
        Decision::allow(format!(
            "allowed: {} is within max_tlp {} and type {ty} is allowed for {who}",
            item.tlp,
            max_tlp.as_str()
        ))
    }

    /// The compiled policy in words, one partner per block (for `entente policy check`).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "node {}", self.node);
        let mut ids: Vec<&NodeId> = self.partners.keys().collect();
        ids.sort();
        for id in ids {
            let p = &self.partners[id];
            let _ = writeln!(out, "\n{}", p.who());
            let _ = writeln!(
                out,
                "  max_tlp:             {}",
                p.max_tlp
                    .map_or("none (receives nothing)".into(), |t| t.as_str().to_owned())
            );
            let _ = writeln!(
                out,
                "  allow_types:         {}",
                match &p.allow_types {
                    None => "none (receives nothing)".to_owned(),
                    Some(t) if t.len() == IndicatorType::ALL.len() => "all".to_owned(),
                    Some(t) => t.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", "),
                }
            );
            if !p.deny_types.is_empty() {
                let _ = writeln!(
                    out,
                    "  deny_types:          {}",
                    p.deny_types
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if !p.allow_tags.is_empty() {
                let _ = writeln!(out, "  allow_tags:          {}", p.allow_tags.join(", "));
            }
            if !p.deny_tags.is_empty() {
                let _ = writeln!(out, "  deny_tags:           {}", p.deny_tags.join(", "));
            }
            if p.kind == PartnerKind::Node {
                let _ = writeln!(out, "  forward_third_party: {}", p.forward_third_party);
            }
            if p.embargo_ms > 0 {
                let _ = writeln!(
                    out,
                    "  embargo:             {}",
                    duration_text(p.embargo_ms)
                );
            }
            if !p.receives_anything() {
                let _ = writeln!(
                    out,
                    "  WARNING: this partner receives nothing under this policy"
                );
            }
        }
        for (name, members) in &self.groups {
            let _ = writeln!(
                out,
                "\ngroup {name}: {}",
                members
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        out
    }
}
