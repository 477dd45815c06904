//! Outbound: [`Policy::decide`], the delivery rule in one place, and the compiled
//! policy it reads.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};

use super::spec::{PolicySettings, PolicySpec};
use crate::model::{Distribution, IndicatorType, Item, ItemId, NodeId, PartnerKind, Role, Tlp};

/// The highest marking a `read_only` partner receives unless its policy says less.
pub const READ_ONLY_MAX_TLP: Tlp = Tlp::Green;

/// Who a decision is about, as the rule's wording names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Who {
    id: NodeId,
    kind: PartnerKind,
    role: Role,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PartnerKind::Node => write!(f, "{} node {}", self.role, self.id),
            PartnerKind::Client => write!(f, "{} client {}", self.role, self.id),
            PartnerKind::Local => write!(f, "the node's operator {}", self.id),
        }
    }
}

/// The rule that made a decision. Its `Display` is the rule in words for an operator
/// (`policy explain`, the demo); code matches on the variant. Field names say what
/// they hold: the item's marking and type, the partner's limit, the partner (`who`).
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The caller holds this node's own key.
    OwnOperator(NodeId),
    /// The partner is not configured (default deny).
    UnknownPartner(NodeId),
    /// The partner's policy names no `max_tlp` (default deny).
    NoMaxTlp(Who),
    /// The item's marking is above the partner's `max_tlp`.
    AboveMaxTlp { tlp: Tlp, max: Tlp, who: Who },
    /// The partner's policy names no `allow_types` (default deny).
    NoAllowTypes(Who),
    /// The item's type is not in `allow_types`.
    TypeNotAllowed { ty: IndicatorType, who: Who },
    /// The item's type is in `deny_types`.
    TypeDenied { ty: IndicatorType, who: Who },
    /// The item has none of the partner's `allow_tags`.
    NoAllowedTag { tags: Vec<String>, who: Who },
    /// The item has a tag in `deny_tags`.
    DeniedTag { tag: String, who: Who },
    /// The partner node is the item's origin: it is not sent back its own.
    OwnOrigin(NodeId),
    /// Another node's item, and the partner does not get third-party items.
    ThirdPartyNotForwarded { origin: NodeId, who: Who },
    /// Another node's item above GREEN stays with this organisation.
    ThirdPartyAboveGreen { tlp: Tlp },
    /// An item taken from a feed (third-party), and the partner does not get those.
    FeedNotForwarded { feed: String, who: Who },
    /// An item taken from a feed above GREEN stays with this organisation.
    FeedAboveGreen { feed: String, tlp: Tlp },
    /// A node partner, and the bundle's distribution is unknown (default deny).
    DistributionUnknown,
    /// One more transfer would pass the bundle's `max_hops`.
    MaxHopsReached { max_hops: u32, hops: u32 },
    /// The partner is not in the bundle's recipient list.
    NotARecipient(NodeId),
    /// The partner's embargo has not passed.
    Embargo {
        embargo_ms: i64,
        until_ms: i64,
        who: Who,
    },
    /// A newer version of the item is held.
    Superseded,
    /// The indicator is past its `valid_until`.
    Expired,
    /// A relationship whose end this node does not hold.
    RefNotHeld { id: ItemId },
    /// A relationship or report that references an item the partner may not see.
    RefWithheld { id: ItemId, who: Who },
    /// A reference this node could not look up (a store error): withheld, as it cannot
    /// be judged.
    RefUnreadable { id: ItemId },
    /// A reference to an object that itself references others, deeper than followed.
    RefTooDeep { id: ItemId },
    /// Every rule allows it.
    Allowed {
        tlp: Tlp,
        max: Tlp,
        types: Vec<IndicatorType>,
        who: Who,
    },
}

impl Rule {
    /// The rule's name: one fixed word per kind of rule, for counting decisions (the
    /// metrics label); [`Display`](fmt::Display) gives the wording with its values.
    pub fn kind(&self) -> &'static str {
        match self {
            Rule::OwnOperator(_) => "own_operator",
            Rule::UnknownPartner(_) => "unknown_partner",
            Rule::NoMaxTlp(_) => "no_max_tlp",
            Rule::AboveMaxTlp { .. } => "above_max_tlp",
            Rule::NoAllowTypes(_) => "no_allow_types",
            Rule::TypeNotAllowed { .. } => "type_not_allowed",
            Rule::TypeDenied { .. } => "type_denied",
            Rule::NoAllowedTag { .. } => "no_allowed_tag",
            Rule::DeniedTag { .. } => "denied_tag",
            Rule::ThirdPartyNotForwarded { .. } => "third_party_not_forwarded",
            Rule::ThirdPartyAboveGreen { .. } => "third_party_above_green",
            Rule::OwnOrigin(_) => "own_origin",
            Rule::FeedNotForwarded { .. } => "feed_not_forwarded",
            Rule::FeedAboveGreen { .. } => "feed_above_green",
            Rule::DistributionUnknown => "distribution_unknown",
            Rule::MaxHopsReached { .. } => "max_hops_reached",
            Rule::NotARecipient(_) => "not_a_recipient",
            Rule::Embargo { .. } => "embargo",
            Rule::Superseded => "superseded",
            Rule::Expired => "expired",
            Rule::RefNotHeld { .. } => "ref_not_held",
            Rule::RefWithheld { .. } => "ref_withheld",
            Rule::RefUnreadable { .. } => "ref_unreadable",
            Rule::RefTooDeep { .. } => "ref_too_deep",
            Rule::Allowed { .. } => "allowed",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::OwnOperator(id) => write!(f, "allowed: {id} is this node's own operator"),
            Rule::UnknownPartner(id) => write!(
                f,
                "withheld: {id} is not configured on this node (default deny)"
            ),
            Rule::NoMaxTlp(who) => write!(
                f,
                "withheld: the policy for {who} names no max_tlp (default deny)"
            ),
            Rule::AboveMaxTlp { tlp, max, who } => write!(
                f,
                "withheld: {tlp} is above max_tlp {} for {who}",
                max.as_str()
            ),
            Rule::NoAllowTypes(who) => write!(
                f,
                "withheld: the policy for {who} names no allow_types (default deny)"
            ),
            Rule::TypeNotAllowed { ty, who } => {
                write!(f, "withheld: type {ty} is not in allow_types for {who}")
            }
            Rule::TypeDenied { ty, who } => {
                write!(f, "withheld: type {ty} is in deny_types for {who}")
            }
            Rule::NoAllowedTag { tags, who } => write!(
                f,
                "withheld: the item has none of the allow_tags [{}] of {who}",
                tags.join(", ")
            ),
            Rule::DeniedTag { tag, who } => {
                write!(f, "withheld: tag {tag} is in deny_tags for {who}")
            }
            Rule::ThirdPartyNotForwarded { origin, who } => write!(
                f,
                "withheld: the item originated at {origin}, and forward_third_party is false for {who}"
            ),
            Rule::ThirdPartyAboveGreen { tlp } => write!(
                f,
                "withheld: {tlp} received from another node stays with this organisation; only GREEN and CLEAR are passed on"
            ),
            Rule::OwnOrigin(id) => write!(
                f,
                "withheld: {id} is the item's origin; a node is not sent back its own items"
            ),
            Rule::FeedNotForwarded { feed, who } => write!(
                f,
                "withheld: the item was taken from a feed ({feed}), which counts as third-party, and forward_third_party is false for {who}"
            ),
            Rule::FeedAboveGreen { feed, tlp } => write!(
                f,
                "withheld: {tlp} taken from a feed ({feed}) stays with this organisation; only GREEN and CLEAR are passed on (share_with_peers in the feed's configuration lets it through)"
            ),
            Rule::DistributionUnknown => write!(
                f,
                "withheld: the bundle's distribution is unknown (default deny)"
            ),
            Rule::MaxHopsReached { max_hops, hops } => write!(
                f,
                "withheld: max_hops {max_hops} is reached (this node holds the item at hop {hops})"
            ),
            Rule::NotARecipient(id) => {
                write!(f, "withheld: {id} is not in the bundle's recipient list")
            }
            Rule::Embargo {
                embargo_ms,
                until_ms,
                who,
            } => write!(
                f,
                "withheld: the embargo of {} for {who} has not passed (visible from {})",
                duration_text(*embargo_ms),
                ms_to_text(*until_ms)
            ),
            Rule::Superseded => write!(f, "withheld: a newer version of the item is held"),
            Rule::Expired => write!(f, "withheld: the indicator has expired"),
            Rule::RefNotHeld { id } => write!(
                f,
                "withheld: it references {id}, which this node does not hold"
            ),
            Rule::RefWithheld { id, who } => {
                write!(f, "withheld: it references {id}, which {who} may not see")
            }
            Rule::RefUnreadable { id } => write!(
                f,
                "withheld: it references {id}, which this node could not read (a store error)"
            ),
            Rule::RefTooDeep { id } => write!(
                f,
                "withheld: it references {id}, whose own references are nested too deep"
            ),
            Rule::Allowed {
                tlp,
                max,
                types,
                who,
            } => write!(
                f,
                "allowed: {tlp} is within max_tlp {} and {} {} {} allowed for {who}",
                max.as_str(),
                if types.len() == 1 { "type" } else { "types" },
                types
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if types.len() == 1 { "is" } else { "are" },
            ),
        }
    }
}

/// Whether the item goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It may be disclosed.
    Allow,
    /// It is withheld. `until` is set when only an embargo holds it back: the time (ms)
    /// from which the same item would be allowed.
    Withhold {
        /// When the embargo lifts, if an embargo is all that withholds it.
        until: Option<i64>,
    },
}

/// The outcome of [`Policy::decide`] and the rule that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Allow or withhold.
    pub outcome: Outcome,
    /// The rule that decided.
    pub rule: Rule,
}

impl Decision {
    fn allow(rule: Rule) -> Self {
        Self {
            outcome: Outcome::Allow,
            rule,
        }
    }

    fn withhold(rule: Rule) -> Self {
        Self {
            outcome: Outcome::Withhold { until: None },
            rule,
        }
    }

    /// Whether the item may be disclosed.
    pub fn allowed(&self) -> bool {
        self.outcome == Outcome::Allow
    }

    /// When withheld by an embargo alone, the time it lifts.
    pub fn embargo_until(&self) -> Option<i64> {
        match self.outcome {
            Outcome::Withhold { until } => until,
            Outcome::Allow => None,
        }
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
    /// What this node holds, for judging the items a relationship or report references.
    pub held: &'a dyn Held,
}

/// What a node holds under an id, so that an object referencing it can be judged by it:
/// a relationship goes only to a partner that may see both its ends, a report only to
/// one that may see every object it references that the node holds.
pub trait Held {
    /// The latest version held under `id`'s UUID, if any, whatever its type (a store
    /// holds one type per UUID; the caller compares the type where it matters); with
    /// its bundle's distribution when `with_distribution` (only a node partner's
    /// decision reads it, and reading it costs a bundle header).
    fn held(&self, id: &ItemId, with_distribution: bool) -> Option<HeldItem>;

    /// [`Self::held`], or [`Unreadable`] when the holder cannot tell (a store error):
    /// policy then withholds what references `id`, as it cannot judge it. By default
    /// every answer of `held` can be told.
    fn lookup(&self, id: &ItemId, with_distribution: bool) -> Result<Option<HeldItem>, Unreadable> {
        Ok(self.held(id, with_distribution))
    }
}

/// A holder could not tell whether it holds an id (its store failed to read it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unreadable;

/// An item a node holds, with what its delivery depends on.
#[derive(Clone, Debug)]
pub struct HeldItem {
    /// The item.
    pub item: Item,
    /// Its bundle's origin.
    pub origin: NodeId,
    /// `hop(N, i)`.
    pub hops: u32,
    /// Its bundle's signed distribution, when known.
    pub distribution: Option<Distribution>,
    /// When this node accepted it, ms.
    pub accepted_ms: i64,
}

impl fmt::Debug for dyn Held + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Held")
    }
}

/// Holds nothing: for decisions on items that reference none (a relationship or report
/// judged with it is withheld).
pub struct NothingHeld;

impl Held for NothingHeld {
    fn held(&self, _: &ItemId, _: bool) -> Option<HeldItem> {
        None
    }
}

/// How deep references are followed: a report may reference a relationship, whose ends
/// are followed too; nothing deeper.
pub const MAX_REF_DEPTH: usize = 2;

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
    /// Types it may receive, after role defaults (sorted); `None` receives nothing.
    pub allow_types: Option<Vec<IndicatorType>>,
    /// Types it never receives (sorted).
    pub deny_types: Vec<IndicatorType>,
    /// When non-empty, an item needs one of these tags (sorted).
    pub allow_tags: Vec<String>,
    /// Tags that withhold an item (sorted).
    pub deny_tags: Vec<String>,
    /// Whether items originated elsewhere may be passed on (nodes only).
    pub forward_third_party: bool,
    /// Embargo, ms.
    pub embargo_ms: i64,
}

/// Tags compare without regard to ASCII case: `PII` is `pii`.
fn lower(tags: &[String]) -> Vec<String> {
    tags.iter().map(|t| t.to_ascii_lowercase()).collect()
}

/// Whether `tags` (an item's) holds `tag` (a policy's, in lower case).
fn has_tag(tags: &[String], tag: &str) -> bool {
    tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
}

fn sorted<T: Ord + Clone>(list: &[T]) -> Vec<T> {
    let mut list = list.to_vec();
    list.sort();
    list.dedup();
    list
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
            Some(types) => Some(sorted(types)),
            None if own_org => Some(IndicatorType::ALL.to_vec()),
            None => None,
        };
        Self {
            id: id.clone(),
            kind,
            role,
            max_tlp,
            allow_types,
            deny_types: sorted(&s.deny_types),
            allow_tags: sorted(&lower(&s.allow_tags)),
            deny_tags: sorted(&lower(&s.deny_tags)),
            forward_third_party: kind == PartnerKind::Node && s.forward_third_party,
            embargo_ms: s.embargo_ms,
        }
    }

    fn who(&self) -> Who {
        Who {
            id: self.id.clone(),
            kind: self.kind,
            role: self.role,
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

    /// Whether this partner may see every item a client may see: every marking, every
    /// type, no tag limits, no embargo.
    pub fn sees_everything(&self) -> bool {
        self.max_tlp == Some(Tlp::Red)
            && self
                .allow_types
                .as_ref()
                .is_some_and(|t| IndicatorType::ALL.iter().all(|ty| t.contains(ty)))
            && self.deny_types.is_empty()
            && self.allow_tags.is_empty()
            && self.deny_tags.is_empty()
            && self.embargo_ms == 0
    }

    /// The canonical bytes of this compiled policy: every field that changes a decision,
    /// length-prefixed, in a fixed order. Fingerprints hash these, never `Debug` output or
    /// the wording of explanations.
    fn canonical(&self, out: &mut Vec<u8>) {
        fn text(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        fn list<'a>(out: &mut Vec<u8>, items: impl ExactSizeIterator<Item = &'a str>) {
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            for item in items {
                text(out, item);
            }
        }
        text(out, self.id.as_str());
        text(
            out,
            match self.kind {
                PartnerKind::Node => "node",
                PartnerKind::Client => "client",
                PartnerKind::Local => "local",
            },
        );
        text(out, self.role.as_str());
        text(out, self.max_tlp.map_or("", Tlp::as_str));
        match &self.allow_types {
            None => out.push(0),
            Some(types) => {
                out.push(1);
                list(out, types.iter().map(|t| t.as_str()));
            }
        }
        list(out, self.deny_types.iter().map(|t| t.as_str()));
        list(out, self.allow_tags.iter().map(String::as_str));
        list(out, self.deny_tags.iter().map(String::as_str));
        out.push(u8::from(self.forward_third_party));
        out.extend_from_slice(&self.embargo_ms.to_be_bytes());
    }
}

/// The compiled sharing policy of a node.
#[derive(Clone, Debug)]
pub struct Policy {
    node: NodeId,
    partners: HashMap<NodeId, PartnerPolicy>,
    groups: BTreeMap<String, Vec<NodeId>>,
    max_clock_skew_ms: i64,
    /// Source tags of feeds whose items count as third-party (sorted, no duplicates).
    feeds: Vec<String>,
    hash: [u8; 32],
}

fn ms_to_text(ms: i64) -> String {
    crate::util::rfc3339_ms(ms).unwrap_or_else(|| ms.to_string())
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
    /// Compiles a policy from its spec (role defaults applied).
    pub fn compile(spec: &PolicySpec) -> Self {
        let partners: HashMap<NodeId, PartnerPolicy> = spec
            .partners
            .iter()
            .map(|p| {
                let partner = &p.partner;
                (
                    partner.id.clone(),
                    PartnerPolicy::compile(&partner.id, partner.kind, partner.role, &p.settings),
                )
            })
            .collect();
        let groups = spec
            .groups
            .iter()
            .map(|(name, members)| (name.clone(), members.clone()))
            .collect();
        let mut feeds = spec.feeds.clone();
        feeds.sort();
        feeds.dedup();
        let mut policy = Self {
            node: spec.node.clone(),
            partners,
            groups,
            max_clock_skew_ms: spec.max_clock_skew_ms.max(0),
            feeds,
            hash: [0; 32],
        };
        policy.hash = policy.canonical_hash();
        policy
    }

    /// SHA-256 over the canonical bytes of everything that changes a decision.
    fn canonical_hash(&self) -> [u8; 32] {
        let mut out = b"entente/policy/v2\0".to_vec();
        out.extend_from_slice(self.node.as_str().as_bytes());
        out.push(0);
        let mut ids: Vec<&NodeId> = self.partners.keys().collect();
        ids.sort();
        out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        for id in ids {
            self.partners[id].canonical(&mut out);
        }
        out.extend_from_slice(&(self.groups.len() as u32).to_be_bytes());
        for (name, members) in &self.groups {
            out.extend_from_slice(&(name.len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            let mut members: Vec<&str> = members.iter().map(NodeId::as_str).collect();
            members.sort_unstable();
            out.extend_from_slice(&(members.len() as u32).to_be_bytes());
            for m in members {
                out.extend_from_slice(&(m.len() as u32).to_be_bytes());
                out.extend_from_slice(m.as_bytes());
            }
        }
        out.extend_from_slice(&self.max_clock_skew_ms.to_be_bytes());
        self.canonical_feeds(&mut out);
        sha256(&out)
    }

    /// The feeds whose items count as third-party, in canonical bytes.
    fn canonical_feeds(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.feeds.len() as u32).to_be_bytes());
        for tag in &self.feeds {
            out.extend_from_slice(&(tag.len() as u32).to_be_bytes());
            out.extend_from_slice(tag.as_bytes());
        }
    }

    /// The feed an item of this node's own came from, when its items count as
    /// third-party: the first such feed's source tag it carries.
    pub fn third_party_feed(&self, item: &Item) -> Option<&String> {
        self.feeds.iter().find(|tag| has_tag(&item.tags, tag))
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// How far in the future an item's time may lie before it is refused, ms.
    pub fn max_clock_skew_ms(&self) -> i64 {
        self.max_clock_skew_ms
    }

    /// SHA-256 of the compiled policy's canonical form: names the policy version in the
    /// disclosure ledger.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// A partner's compiled policy.
    pub fn partner(&self, id: &NodeId) -> Option<&PartnerPolicy> {
        self.partners.get(id)
    }

    /// Whether `partner` may see items of marking `tlp` at all (the node's own operator
    /// sees every marking): the marking definitions a client is given are those of the
    /// markings its policy lets through, which says nothing about the items held.
    pub fn marking_visible(&self, partner: &NodeId, tlp: Tlp) -> bool {
        partner == &self.node
            || self
                .partners
                .get(partner)
                .is_some_and(|p| p.receives_anything() && p.max_tlp.is_some_and(|max| tlp <= max))
    }

    /// Every configured partner's compiled policy.
    pub fn partners(&self) -> impl Iterator<Item = &PartnerPolicy> {
        self.partners.values()
    }

    /// A fingerprint of one partner's compiled policy (all zero for an unknown partner):
    /// when it changes, the partner's feed is replayed from the start so it receives
    /// what it may now see. Computed from the canonical fields, so rewording an
    /// explanation never replays a feed, and every change of a field does.
    pub fn partner_fingerprint(&self, id: &NodeId) -> [u8; 32] {
        match self.partners.get(id) {
            Some(p) => {
                let mut out = b"entente/partner-policy/v2\0".to_vec();
                p.canonical(&mut out);
                // Which feeds count as third-party changes what a node is sent: a feed
                // let through now replays the partner's feed, so it gets what it may.
                if p.kind == PartnerKind::Node && !self.feeds.is_empty() {
                    self.canonical_feeds(&mut out);
                }
                sha256(&out)
            }
            None => [0; 32],
        }
    }

    /// The ids of every configured partner, in no particular order.
    pub fn partner_ids(&self) -> impl Iterator<Item = &NodeId> {
        self.partners.keys()
    }

    /// The members of a sharing group.
    pub fn group(&self, name: &str) -> Option<&[NodeId]> {
        self.groups.get(name).map(Vec::as_slice)
    }

    /// Decides whether `item` may be disclosed to `partner` (the delivery rule).
    pub fn decide(&self, partner: &NodeId, item: &Item, ctx: &Context<'_>) -> Decision {
        self.decide_at(partner, item, ctx, 0)
    }

    /// The decision for a superseded version of an item that a client asks for by the
    /// item's id (TAXII's object and versions resources), with `latest` the latest
    /// version held and `latest_ctx` its context. Rule 6 gives way only there, and only
    /// for a client (or the node's own operator) that may see the latest version now, so
    /// an old version never tells a caller that an id is held when the latest version
    /// is withheld from it (a marking raised since, a tag added); and the old version
    /// must itself pass every other rule (its own marking, types, tags and references),
    /// so a marking lowered since discloses nothing of what the old version was.
    pub fn decide_superseded(
        &self,
        partner: &NodeId,
        version: &Item,
        ctx: &Context<'_>,
        latest: &Item,
        latest_ctx: &Context<'_>,
    ) -> Decision {
        let current = self.decide(partner, latest, latest_ctx);
        if !current.allowed() {
            return current;
        }
        if partner != &self.node
            && self
                .partners
                .get(partner)
                .is_none_or(|p| p.kind != PartnerKind::Client)
        {
            return Decision::withhold(Rule::Superseded);
        }
        let own = Context {
            latest: true,
            ..ctx.clone()
        };
        self.decide(partner, version, &own)
    }

    /// Rule 7: a relationship, a sighting or a report only if every object it references
    /// is held here and the partner may see it, and any
    /// item only if the partner may see every held item whose id its properties carry
    /// ([`Item::referenced`]); each decided by this same rule for the partner. `None`
    /// when the references allow it.
    fn references(
        &self,
        partner: &NodeId,
        item: &Item,
        referenced: &[ItemId],
        ctx: &Context<'_>,
        depth: usize,
    ) -> Option<Decision> {
        let mut until: Option<i64> = None;
        let to_node = self
            .partners
            .get(partner)
            .is_some_and(|p| p.kind == PartnerKind::Node);
        // What it references by structure (a relationship's two ends, a sighting's
        // objects, a report's object_refs) must be held: one that arrived before what it
        // names stays withheld until that arrives, and is then judged with it, so the
        // order of arrival never lets a reference to a withheld item out. Any other UUID
        // it names (written in its properties, as an id or bare) is judged when held.
        let ends = item.refs().len();
        for (at, id) in referenced.iter().enumerate() {
            let found = match ctx.held.lookup(id, to_node) {
                Ok(found) => found,
                Err(Unreadable) => {
                    return Some(Decision::withhold(Rule::RefUnreadable { id: id.clone() }));
                }
            };
            // A structural reference names its end, type included; an id written
            // elsewhere stands for its UUID, and is judged by whatever is held under it.
            let Some(held) = found.filter(|h| {
                if at < ends {
                    &h.item.id == id
                } else {
                    h.item.id.uuid_bytes() == id.uuid_bytes()
                }
            }) else {
                if at < ends {
                    return Some(Decision::withhold(Rule::RefNotHeld { id: id.clone() }));
                }
                continue;
            };
            if !held.item.referenced().is_empty() && depth + 1 >= MAX_REF_DEPTH {
                return Some(Decision::withhold(Rule::RefTooDeep { id: id.clone() }));
            }
            let end = self.decide_at(
                partner,
                &held.item,
                &Context {
                    origin: &held.origin,
                    hops: held.hops,
                    distribution: held.distribution.as_ref(),
                    accepted_ms: held.accepted_ms,
                    now_ms: ctx.now_ms,
                    latest: true,
                    include_expired: ctx.include_expired,
                    held: ctx.held,
                },
                depth + 1,
            );
            if !end.allowed() {
                let who = match self.partners.get(partner) {
                    Some(p) => p.who(),
                    None => return Some(end),
                };
                match end.embargo_until() {
                    // Visible once the end's embargo has passed: wait as long.
                    Some(at) => until = Some(until.map_or(at, |u| u.max(at))),
                    None => {
                        return Some(Decision::withhold(Rule::RefWithheld {
                            id: id.clone(),
                            who,
                        }));
                    }
                }
            }
        }
        let until = until?;
        let who = self.partners.get(partner).map(PartnerPolicy::who)?;
        let mut decision = Decision::withhold(Rule::RefWithheld {
            id: referenced.first()?.clone(),
            who,
        });
        decision.outcome = Outcome::Withhold { until: Some(until) };
        Some(decision)
    }

    fn decide_at(
        &self,
        partner: &NodeId,
        item: &Item,
        ctx: &Context<'_>,
        depth: usize,
    ) -> Decision {
        if partner == &self.node {
            return Decision::allow(Rule::OwnOperator(partner.clone()));
        }
        let Some(p) = self.partners.get(partner) else {
            return Decision::withhold(Rule::UnknownPartner(partner.clone()));
        };
        // A node is never sent back what it originated: it holds it already, and what
        // comes back to it must not depend on what else this node holds (an object of
        // its own naming an id this node withholds from it would otherwise not return).
        // Only for the item sent: an object it references that the partner originated
        // is one the partner holds (a sighting of its own indicator goes to it).
        if depth == 0 && p.kind == PartnerKind::Node && ctx.origin == partner {
            return Decision::withhold(Rule::OwnOrigin(partner.clone()));
        }
        // Rule 2: the partner's policy allows the item.
        let Some(max_tlp) = p.max_tlp else {
            return Decision::withhold(Rule::NoMaxTlp(p.who()));
        };
        if item.tlp > max_tlp {
            return Decision::withhold(Rule::AboveMaxTlp {
                tlp: item.tlp,
                max: max_tlp,
                who: p.who(),
            });
        }
        // Every type the item is about: one, or each that a STIX pattern names.
        let types = item.policy_types();
        let Some(allowed) = &p.allow_types else {
            return Decision::withhold(Rule::NoAllowTypes(p.who()));
        };
        if let Some(&ty) = types.iter().find(|ty| !allowed.contains(ty)) {
            return Decision::withhold(Rule::TypeNotAllowed { ty, who: p.who() });
        }
        if let Some(&ty) = types.iter().find(|ty| p.deny_types.contains(ty)) {
            return Decision::withhold(Rule::TypeDenied { ty, who: p.who() });
        }
        if !p.allow_tags.is_empty() && !p.allow_tags.iter().any(|t| has_tag(&item.tags, t)) {
            return Decision::withhold(Rule::NoAllowedTag {
                tags: p.allow_tags.clone(),
                who: p.who(),
            });
        }
        if let Some(tag) = p.deny_tags.iter().find(|t| has_tag(&item.tags, t)) {
            return Decision::withhold(Rule::DeniedTag {
                tag: tag.clone(),
                who: p.who(),
            });
        }
        if p.kind == PartnerKind::Node {
            // Rule 3: what came from another node is passed on only if allowed and GREEN or
            // CLEAR; so is what this node took from a feed (unless `share_with_peers`).
            if ctx.origin == &self.node {
                if let Some(feed) = self.third_party_feed(item) {
                    if !p.forward_third_party {
                        return Decision::withhold(Rule::FeedNotForwarded {
                            feed: feed.clone(),
                            who: p.who(),
                        });
                    }
                    if item.tlp > Tlp::Green {
                        return Decision::withhold(Rule::FeedAboveGreen {
                            feed: feed.clone(),
                            tlp: item.tlp,
                        });
                    }
                }
            } else {
                if !p.forward_third_party {
                    return Decision::withhold(Rule::ThirdPartyNotForwarded {
                        origin: ctx.origin.clone(),
                        who: p.who(),
                    });
                }
                if item.tlp > Tlp::Green {
                    return Decision::withhold(Rule::ThirdPartyAboveGreen { tlp: item.tlp });
                }
            }
            // Rule 4: distribution.
            let Some(distribution) = ctx.distribution else {
                return Decision::withhold(Rule::DistributionUnknown);
            };
            if let Some(max_hops) = distribution.max_hops {
                if u64::from(ctx.hops) + 1 > u64::from(max_hops) {
                    return Decision::withhold(Rule::MaxHopsReached {
                        max_hops,
                        hops: ctx.hops,
                    });
                }
            }
            if !distribution.admits(partner) {
                return Decision::withhold(Rule::NotARecipient(partner.clone()));
            }
        }
        // Rule 6 first where it is final: a superseded version never becomes visible.
        if !ctx.latest {
            return Decision::withhold(Rule::Superseded);
        }
        // Only a client may ask for expired indicators; a node never receives them.
        let waive_expiry = ctx.include_expired && p.kind == PartnerKind::Client;
        let expired_at = |t: i64| !waive_expiry && item.is_expired(t);
        // Rule 5: embargo.
        if p.embargo_ms > 0 && ctx.now_ms.saturating_sub(ctx.accepted_ms) < p.embargo_ms {
            let until_ms = ctx.accepted_ms.saturating_add(p.embargo_ms);
            return Decision {
                // Visible once the embargo lifts, unless it has expired by then.
                outcome: Outcome::Withhold {
                    until: (!expired_at(until_ms)).then_some(until_ms),
                },
                rule: Rule::Embargo {
                    embargo_ms: p.embargo_ms,
                    until_ms,
                    who: p.who(),
                },
            };
        }
        if expired_at(ctx.now_ms) {
            return Decision::withhold(Rule::Expired);
        }
        let referenced = item.referenced();
        if !referenced.is_empty() {
            if let Some(withheld) = self.references(partner, item, &referenced, ctx, depth) {
                return withheld;
            }
        }
        Decision::allow(Rule::Allowed {
            tlp: item.tlp,
            max: max_tlp,
            types,
            who: p.who(),
        })
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

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Partner;
    use crate::policy::{PolicySettings, PolicySpec};

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn spec(settings: PolicySettings) -> PolicySpec {
        PolicySpec::new(id("hq.example")).with(
            Partner {
                id: id("lea.example"),
                kind: PartnerKind::Node,
                role: Role::Peer,
            },
            settings,
        )
    }

    fn base() -> PolicySettings {
        PolicySettings {
            max_tlp: Some(Tlp::Amber),
            allow_types: Some(vec![IndicatorType::Ipv4, IndicatorType::Domain]),
            deny_types: vec![IndicatorType::Md5],
            allow_tags: vec!["a".into(), "b".into()],
            deny_tags: vec!["pii".into(), "x".into()],
            forward_third_party: true,
            embargo_ms: 60_000,
        }
    }

    #[test]
    fn fingerprints_follow_canonical_fields_not_wording_or_order() {
        let lea = id("lea.example");
        let fingerprint = |s: PolicySettings| Policy::compile(&spec(s)).partner_fingerprint(&lea);
        let reference = fingerprint(base());
        // The same policy written in another order, with a repeated tag.
        let mut reordered = base();
        reordered.allow_types = Some(vec![IndicatorType::Domain, IndicatorType::Ipv4]);
        reordered.deny_tags = vec!["x".into(), "pii".into(), "x".into()];
        assert_eq!(fingerprint(reordered), reference);
        // Every field that changes a decision changes the fingerprint.
        type Change = Box<dyn Fn(&mut PolicySettings)>;
        let changes: Vec<Change> = vec![
            Box::new(|s| s.max_tlp = Some(Tlp::Green)),
            Box::new(|s| s.max_tlp = None),
            Box::new(|s| s.allow_types = None),
            Box::new(|s| s.allow_types = Some(vec![IndicatorType::Ipv4])),
            Box::new(|s| s.deny_types = vec![]),
            Box::new(|s| s.allow_tags = vec!["a".into()]),
            Box::new(|s| s.deny_tags = vec!["pii".into()]),
            Box::new(|s| s.forward_third_party = false),
            Box::new(|s| s.embargo_ms = 0),
        ];
        for (n, change) in changes.iter().enumerate() {
            let mut settings = base();
            change(&mut settings);
            assert_ne!(fingerprint(settings), reference, "change {n}");
        }
        // A tag that could be confused with two when joined still differs.
        let mut joined = base();
        joined.allow_tags = vec!["a,b".into()];
        assert_ne!(fingerprint(joined), reference);
        assert_eq!(
            Policy::compile(&spec(base())).partner_fingerprint(&id("other.example")),
            [0; 32]
        );
    }

    #[test]
    fn the_policy_hash_changes_with_groups_and_skew() {
        let a = Policy::compile(&spec(base()));
        let mut with_group = spec(base());
        with_group
            .groups
            .insert("satellites".into(), vec![id("lea.example")]);
        let mut with_skew = spec(base());
        with_skew.max_clock_skew_ms += 1;
        assert_ne!(Policy::compile(&with_group).hash(), a.hash());
        assert_ne!(Policy::compile(&with_skew).hash(), a.hash());
        assert_eq!(Policy::compile(&spec(base())).hash(), a.hash());
    }

    #[test]
    fn a_reference_the_store_cannot_read_withholds_what_names_it() {
        struct Broken;
        impl Held for Broken {
            fn held(&self, _: &ItemId, _: bool) -> Option<HeldItem> {
                None
            }
            fn lookup(&self, _: &ItemId, _: bool) -> Result<Option<HeldItem>, Unreadable> {
                Err(Unreadable)
            }
        }
        let reader = id("uni.example");
        let policy = Policy::compile(&PolicySpec::new(id("hq.example")).with(
            Partner {
                id: reader.clone(),
                kind: PartnerKind::Client,
                role: Role::ReadOnly,
            },
            PolicySettings {
                allow_types: Some(IndicatorType::ALL.to_vec()),
                ..PolicySettings::default()
            },
        ));
        let named = "indicator--a1a1a1a1-0000-4000-8000-000000000001";
        let mut object = serde_json::Map::new();
        object.insert("object_refs".into(), serde_json::json!([named]));
        let report = Item {
            id: ItemId::parse("report--a1a1a1a1-0000-4000-8000-000000000002").unwrap(),
            modified_ms: 1,
            tlp: Tlp::Green,
            tags: vec![],
            kind: crate::model::ItemKind::Context(crate::model::ContextObject {
                object_type: IndicatorType::Report,
                refs: vec![ItemId::parse(named).unwrap()],
                properties: crate::model::StixProperties::keep_for(
                    crate::model::Holder::Context,
                    &object,
                )
                .unwrap(),
            }),
        };
        let hq = id("hq.example");
        let decide = |held: &dyn Held| {
            policy.decide(
                &reader,
                &report,
                &Context {
                    origin: &hq,
                    hops: 0,
                    distribution: None,
                    accepted_ms: 0,
                    now_ms: 1,
                    latest: true,
                    include_expired: false,
                    held,
                },
            )
        };
        // Not held (yet): a report waits for what it references, as a relationship does.
        let decision = decide(&NothingHeld);
        assert!(
            matches!(decision.rule, Rule::RefNotHeld { .. }),
            "{decision:?}"
        );
        // Held or not cannot be told: withheld.
        let decision = decide(&Broken);
        assert!(!decision.allowed());
        assert!(
            matches!(decision.rule, Rule::RefUnreadable { .. }),
            "{decision:?}"
        );
    }

    #[test]
    fn items_taken_from_a_feed_go_to_nodes_as_third_party_items_do() {
        let hq = id("hq.example");
        let lea = id("lea.example");
        let closed = id("closed.example");
        let researcher = id("researcher.example");
        let open = PolicySettings {
            max_tlp: Some(Tlp::Red),
            allow_types: Some(IndicatorType::ALL.to_vec()),
            forward_third_party: true,
            ..PolicySettings::default()
        };
        let mut spec = spec(open.clone())
            .with(
                Partner {
                    id: closed.clone(),
                    kind: PartnerKind::Node,
                    role: Role::Peer,
                },
                PolicySettings {
                    forward_third_party: false,
                    ..open.clone()
                },
            )
            .with(
                Partner {
                    id: researcher.clone(),
                    kind: PartnerKind::Client,
                    role: Role::ReadOnly,
                },
                open,
            );
        spec.feeds = vec!["source:vendor".into()];
        let policy = Policy::compile(&spec);
        let item = |tlp: Tlp, tag: &str| Item {
            id: ItemId::new_random(),
            modified_ms: 1,
            tlp,
            tags: vec![tag.to_owned()],
            kind: crate::model::ItemKind::Indicator(crate::model::Indicator {
                indicator_type: IndicatorType::Domain,
                value: "vendor.example".into(),
                description: String::new(),
                confidence: 50,
                kill_chain_phases: vec![],
                valid_from_ms: 1,
                valid_until_ms: None,
                properties: crate::model::StixProperties::none(),
            }),
        };
        let everyone = Distribution::default();
        let decide = |who: &NodeId, item: &Item| {
            policy
                .decide(
                    who,
                    item,
                    &Context {
                        origin: &hq,
                        hops: 0,
                        distribution: Some(&everyone),
                        accepted_ms: 0,
                        now_ms: 1,
                        latest: true,
                        include_expired: false,
                        held: &NothingHeld,
                    },
                )
                .rule
        };
        for tlp in [Tlp::Amber, Tlp::AmberStrict, Tlp::Red] {
            let rule = decide(&lea, &item(tlp, "source:vendor"));
            assert!(
                matches!(rule, Rule::FeedAboveGreen { .. }),
                "{tlp:?}: {rule:?}"
            );
            // The node's own clients get it, as they get what other nodes send.
            assert!(matches!(
                decide(&researcher, &item(tlp, "source:vendor")),
                Rule::Allowed { .. }
            ));
            // The node's own writing, with another source tag, is its own.
            assert!(matches!(
                decide(&lea, &item(tlp, "source:informant")),
                Rule::Allowed { .. }
            ));
        }
        assert!(matches!(
            decide(&lea, &item(Tlp::Green, "source:vendor")),
            Rule::Allowed { .. }
        ));
        let rule = decide(&closed, &item(Tlp::Green, "source:vendor"));
        assert!(matches!(rule, Rule::FeedNotForwarded { .. }), "{rule:?}");
        // The set of such feeds is part of what names the policy and a node's view.
        let mut shared = spec.clone();
        shared.feeds.clear();
        let shared = Policy::compile(&shared);
        assert_ne!(shared.hash(), policy.hash());
        assert_ne!(
            shared.partner_fingerprint(&lea),
            policy.partner_fingerprint(&lea)
        );
        assert_eq!(
            shared.partner_fingerprint(&researcher),
            policy.partner_fingerprint(&researcher)
        );
    }

    #[test]
    fn a_node_is_not_sent_back_its_own_items() {
        let lea = id("lea.example");
        let mut open = base();
        open.allow_tags.clear();
        open.deny_tags.clear();
        open.embargo_ms = 0;
        let policy = Policy::compile(&spec(open));
        let item = Item {
            id: ItemId::new_random(),
            modified_ms: 1,
            tlp: Tlp::Green,
            tags: vec![],
            kind: crate::model::ItemKind::Indicator(crate::model::Indicator {
                indicator_type: IndicatorType::Domain,
                value: "own.example".into(),
                description: String::new(),
                confidence: 50,
                kill_chain_phases: vec![],
                valid_from_ms: 1,
                valid_until_ms: None,
                properties: crate::model::StixProperties::none(),
            }),
        };
        let everyone = Distribution::default();
        let decide = |origin: &NodeId| {
            policy
                .decide(
                    &lea,
                    &item,
                    &Context {
                        origin,
                        hops: 1,
                        distribution: Some(&everyone),
                        accepted_ms: 0,
                        now_ms: 1,
                        latest: true,
                        include_expired: false,
                        held: &NothingHeld,
                    },
                )
                .rule
        };
        assert!(
            matches!(decide(&lea), Rule::OwnOrigin(_)),
            "{:?}",
            decide(&lea)
        );
        assert!(matches!(
            decide(&id("berlin.example")),
            Rule::Allowed { .. }
        ));
    }
}
