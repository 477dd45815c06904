//! Inbound: the rules a bundle pulled from a peer must pass before it is verified and
//! stored, and the rules every item must pass, whoever publishes it. A refusal is a
//! typed [`Refusal`]; [`Refusal::is_transient`] says whether the same bundle may be
//! accepted later (a clock that is behind), so the puller retries it instead of passing
//! it over for good.

use super::decide::Policy;
use crate::model::{
    BundleId, Distribution, Item, NodeId, PartnerKind, Role, Tlp, origin_identity_id,
};

/// Times further ahead than this past the allowed clock skew are never retried.
const TRANSIENT_FUTURE_MS: i64 = 24 * 3_600_000;

/// A bundle arriving from a peer, as its (not yet verified) header describes it.
#[derive(Clone, Copy, Debug)]
pub struct Arrival<'a> {
    /// The peer that sent it.
    pub sender: &'a NodeId,
    /// The bundle's origin.
    pub origin: &'a NodeId,
    /// The hop count at which the sender says it holds the items.
    pub sender_hops: u32,
    /// The bundle's signed distribution.
    pub distribution: &'a Distribution,
    /// The bundle id.
    pub bundle_id: &'a BundleId,
}

/// Why a bundle or an item was refused on the way in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The sender is not configured here as a `peer` node.
    #[error("{sender} is not a peer this node accepts data from")]
    NotAPeer {
        /// The sender.
        sender: NodeId,
    },
    /// The origin is configured here as a client or a read-only partner.
    #[error("{origin} is configured here as {role}, whose data is not accepted")]
    OriginNotAccepted {
        /// The origin.
        origin: NodeId,
        /// Its role here.
        role: Role,
    },
    /// The sender's hop count contradicts the origin (hop 0 is the origin's own).
    #[error("{sender} claims hop {hops} for a bundle whose origin is {origin}")]
    HopMismatch {
        /// The sender.
        sender: NodeId,
        /// The hop count it claimed.
        hops: u32,
        /// The bundle's origin.
        origin: NodeId,
    },
    /// One more transfer passes the bundle's `max_hops`.
    #[error("bundle {bundle} would be at hop {hops}, beyond its max_hops")]
    BeyondMaxHops {
        /// The bundle.
        bundle: BundleId,
        /// The hop count it would have here.
        hops: u32,
    },
    /// This node is not in the bundle's recipient list.
    #[error("this node is not in the recipient list of bundle {bundle}")]
    NotARecipient {
        /// The bundle.
        bundle: BundleId,
    },
    /// A node other than the origin forwarded an item above GREEN.
    #[error(
        "{sender} forwarded a {tlp} item of {origin}: only GREEN and CLEAR travel past the origin's partners"
    )]
    ThirdPartyAboveGreen {
        /// The sender.
        sender: NodeId,
        /// The item's marking.
        tlp: Tlp,
        /// The bundle's origin.
        origin: NodeId,
    },
    /// An item's `modified` time lies further in the
    /// future than the allowed clock skew: accepted, it would pin the item so that no
    /// update or revocation could replace it.
    #[error(
        "item {item}: modified is {ahead_ms} ms in the future, beyond the allowed clock skew of {skew_ms} ms"
    )]
    FromTheFuture {
        /// The item.
        item: String,
        /// How far ahead of now, ms.
        ahead_ms: i64,
        /// The skew allowed, ms.
        skew_ms: i64,
    },
    /// An item's `created_by_ref` names the identity a node of this federation has in
    /// exports, and that node is not the item's origin: exported, the item would claim
    /// to come from a node that never signed it.
    #[error(
        "item {item}: created_by_ref names the identity of {named}, but the item's origin is {origin}; only {named}'s own items may name it"
    )]
    ForeignCreator {
        /// The item.
        item: String,
        /// The node whose identity it names.
        named: NodeId,
        /// The item's origin.
        origin: NodeId,
    },
    /// An `identity` item has the id of the identity a node of this federation has in
    /// exports (its own origin's included): exported, two objects would share one id,
    /// and one would describe the node as something else.
    #[error(
        "item {item}: it is the export identity of {named}; a node's identity is written by the export, never published"
    )]
    NodeIdentity {
        /// The item.
        item: String,
        /// The node whose identity it is.
        named: NodeId,
    },
    /// An `identity` item is named as a node of this federation (its own origin
    /// included): exported, it would stand beside the node's own identity, and an object
    /// whose `created_by_ref` names it would show that node as its author.
    #[error(
        "item {item}: an identity named {named} would pass for that node's own in exports; a node's identity is written by the export, never published"
    )]
    NodeName {
        /// The item.
        item: String,
        /// The node it is named as.
        named: NodeId,
    },
    /// An `identity` item has the id of the identity that defines the extensions exports
    /// use: exported, two objects would share one id.
    #[error(
        "item {item}: it is the identity that defines the extensions of exports; it is written by the export, never published"
    )]
    ProjectIdentity {
        /// The item.
        item: String,
    },
}

/// What a reader sees of a name, in forms where two names that look alike are equal
/// (compare with [`look_alike`]): white space and characters that do not show (a
/// zero-width space, a soft hyphen, a byte-order mark) left out, then each character
/// replaced by the one it is confused with (Unicode's confusable skeleton: a Cyrillic
/// `о` for a Latin `o`, a full-width `．` for `.`, a capital `I` for a small `l`), and a
/// full stop at the end left out. Once as written, once in small letters: a capital
/// `I` looks like a small `l`, and `BERLIN` reads as `berlin`.
fn looks_like(name: &str) -> [String; 2] {
    use unicode_security::confusable_detection::skeleton;
    let shown: String = name.chars().filter(|&c| shows(c)).collect();
    let form = |text: &str| {
        let mut form: String = skeleton(text).collect();
        while form.ends_with('.') {
            form.pop();
        }
        form
    };
    [form(&shown), form(&shown.to_lowercase())]
}

/// Whether two names look alike to a reader ([`looks_like`]).
fn look_alike(a: &[String; 2], b: &[String; 2]) -> bool {
    a[0] == b[0] || a[1] == b[1]
}

/// Whether `c` shows as something in a name: not white space, not a control
/// character, and not one Unicode says is ignored when displayed.
fn shows(c: char) -> bool {
    !c.is_whitespace() && !c.is_control() && !crate::model::is_invisible(c)
}

impl Refusal {
    /// Whether the same bundle may pass later: only a time a little ahead of this
    /// node's clock (this clock may be behind). Everything else is final.
    pub fn is_transient(&self) -> bool {
        match self {
            Refusal::FromTheFuture {
                ahead_ms, skew_ms, ..
            } => *ahead_ms <= skew_ms.saturating_add(TRANSIENT_FUTURE_MS),
            _ => false,
        }
    }
}

impl Policy {
    /// The rules a pulled bundle's header must pass (sender role, origin role, hop
    /// consistency, `max_hops`, recipients). Returns the hop count at which this node
    /// will hold its items.
    pub fn admit(&self, arrival: &Arrival<'_>) -> Result<u32, Refusal> {
        match self.partner(arrival.sender) {
            Some(p) if p.kind == PartnerKind::Node && p.role == Role::Peer => {}
            _ => {
                return Err(Refusal::NotAPeer {
                    sender: arrival.sender.clone(),
                });
            }
        }
        // Data originated by a partner this node configures as a client or a read-only
        // partner is never accepted, whichever node forwards it.
        if let Some(o) = self.partner(arrival.origin) {
            if o.kind != PartnerKind::Node || o.role != Role::Peer {
                return Err(Refusal::OriginNotAccepted {
                    origin: arrival.origin.clone(),
                    role: o.role,
                });
            }
        }
        if (arrival.origin == arrival.sender) != (arrival.sender_hops == 0) {
            return Err(Refusal::HopMismatch {
                sender: arrival.sender.clone(),
                hops: arrival.sender_hops,
                origin: arrival.origin.clone(),
            });
        }
        let hops = arrival.sender_hops.saturating_add(1);
        if arrival.distribution.max_hops.is_some_and(|max| hops > max) {
            return Err(Refusal::BeyondMaxHops {
                bundle: arrival.bundle_id.clone(),
                hops,
            });
        }
        if !arrival.distribution.admits(self.node()) {
            return Err(Refusal::NotARecipient {
                bundle: arrival.bundle_id.clone(),
            });
        }
        Ok(hops)
    }

    /// The rules every item of a pulled bundle must pass once it verified: past the
    /// origin's own partners only GREEN and CLEAR travel, and no time lies beyond the
    /// clock skew.
    pub fn admit_items<'a>(
        &self,
        arrival: &Arrival<'_>,
        items: impl IntoIterator<Item = &'a Item>,
        now_ms: i64,
    ) -> Result<(), Refusal> {
        for item in items {
            if arrival.origin != arrival.sender && item.tlp > Tlp::Green {
                return Err(Refusal::ThirdPartyAboveGreen {
                    sender: arrival.sender.clone(),
                    tlp: item.tlp,
                    origin: arrival.origin.clone(),
                });
            }
            self.admit_time(item, now_ms)?;
            self.admit_creator(item, arrival.origin)?;
        }
        Ok(())
    }

    /// The rule every item must pass, this node's own included: a `created_by_ref` that
    /// names the export identity of a node this node knows (itself or a configured
    /// partner) names the item's origin. Otherwise an item published by one node would
    /// be exported as created by another, whose identity the export describes as the
    /// origin of what it signs.
    pub fn admit_creator(&self, item: &Item, origin: &NodeId) -> Result<(), Refusal> {
        if item.indicator_type() == crate::model::IndicatorType::Identity {
            let id = item.id.as_str();
            if let Some(named) = std::iter::once(self.node())
                .chain(self.partner_ids())
                .chain(std::iter::once(origin))
                .find(|node| id == origin_identity_id(node.as_str()))
            {
                return Err(Refusal::NodeIdentity {
                    item: item.id.to_string(),
                    named: named.clone(),
                });
            }
            if item.id.as_str() == crate::model::PROJECT_IDENTITY_ID {
                return Err(Refusal::ProjectIdentity {
                    item: item.id.to_string(),
                });
            }
            if let crate::model::ItemKind::Context(context) = &item.kind {
                let name = context.properties.string("name").unwrap_or_default();
                let name = looks_like(&name);
                if let Some(named) = std::iter::once(self.node())
                    .chain(self.partner_ids())
                    .chain(std::iter::once(origin))
                    .find(|node| look_alike(&name, &looks_like(node.as_str())))
                {
                    return Err(Refusal::NodeName {
                        item: item.id.to_string(),
                        named: named.clone(),
                    });
                }
            }
        }
        let Some(creator) = item.created_by_ref() else {
            return Ok(());
        };
        // Ids compare without regard to case, as `ItemId::parse` and many tools read them.
        if creator.eq_ignore_ascii_case(&origin_identity_id(origin.as_str())) {
            return Ok(());
        }
        let named = std::iter::once(self.node())
            .chain(self.partner_ids())
            .find(|node| {
                *node != origin && creator.eq_ignore_ascii_case(&origin_identity_id(node.as_str()))
            });
        match named {
            Some(named) => Err(Refusal::ForeignCreator {
                item: item.id.to_string(),
                named: named.clone(),
                origin: origin.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The rule every item must pass, this node's own included: its `modified` time lies
    /// no further in the future than the clock skew.
    pub fn admit_time(&self, item: &Item, now_ms: i64) -> Result<(), Refusal> {
        let skew_ms = self.max_clock_skew_ms();
        let limit = now_ms.saturating_add(skew_ms);
        if item.modified_ms > limit {
            return Err(Refusal::FromTheFuture {
                item: item.id.to_string(),
                ahead_ms: item.modified_ms.saturating_sub(now_ms),
                skew_ms,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Indicator, IndicatorType, ItemId, ItemKind, Partner, PartnerKind};
    use crate::policy::{PolicySettings, PolicySpec};

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn names_that_look_alike_compare_equal() {
        let node = looks_like("berlin.office");
        for alike in [
            "berlin.office",
            "BERLIN.OFFICE",
            // Cyrillic о and е, Greek ο.
            "berlin.\u{43e}ffic\u{435}",
            "berlin.\u{3bf}ffice",
            // Full-width letters and full stop.
            "\u{ff42}erlin\u{ff0e}office",
            // A digit one for a small L, a capital i for a small L.
            "ber1in.office",
            "berIin.office",
            "berlin\u{200b}.office",
            "berlin.office.",
        ] {
            assert!(look_alike(&looks_like(alike), &node), "{alike:?}");
        }
        for other in [
            "berlin.offices",
            "berlin-office",
            "bern.office",
            "berlinoffice",
        ] {
            assert!(!look_alike(&looks_like(other), &node), "{other:?}");
        }
    }

    fn policy() -> Policy {
        let partner = |name: &str, kind, role| Partner {
            id: id(name),
            kind,
            role,
        };
        Policy::compile(
            &PolicySpec::new(id("hq.example"))
                .with(
                    partner("berlin.example", PartnerKind::Node, Role::Peer),
                    PolicySettings::default(),
                )
                .with(
                    partner("uni.example", PartnerKind::Node, Role::ReadOnly),
                    PolicySettings::default(),
                )
                .with(
                    partner("alice.example", PartnerKind::Client, Role::Analyst),
                    PolicySettings::default(),
                ),
        )
    }

    fn item(tlp: Tlp, modified_ms: i64) -> Item {
        Item {
            id: ItemId::new_random(),
            modified_ms,
            tlp,
            tags: vec![],
            kind: ItemKind::Indicator(Indicator {
                indicator_type: IndicatorType::Domain,
                value: "x.example".into(),
                description: String::new(),
                confidence: 50,
                kill_chain_phases: vec![],
                valid_from_ms: modified_ms,
                valid_until_ms: None,
                properties: crate::model::StixProperties::none(),
            }),
        }
    }

    #[test]
    fn inbound_rules_refuse_with_a_typed_reason() {
        let policy = policy();
        let bundle = BundleId::new_random();
        let arrival =
            |sender: &'static str, origin: &'static str, hops: u32, d: &'static Distribution| {
                (id(sender), id(origin), hops, d)
            };
        static OPEN: Distribution = Distribution {
            max_hops: None,
            recipients: Vec::new(),
        };
        static ONE_HOP: Distribution = Distribution {
            max_hops: Some(1),
            recipients: Vec::new(),
        };
        let cases = [
            (arrival("berlin.example", "berlin.example", 0, &OPEN), Ok(1)),
            (arrival("berlin.example", "far.example", 1, &OPEN), Ok(2)),
            (
                arrival("uni.example", "uni.example", 0, &OPEN),
                Err("NotAPeer"),
            ),
            (
                arrival("stranger.example", "stranger.example", 0, &OPEN),
                Err("NotAPeer"),
            ),
            (
                arrival("berlin.example", "alice.example", 1, &OPEN),
                Err("OriginNotAccepted"),
            ),
            (
                arrival("berlin.example", "uni.example", 1, &OPEN),
                Err("OriginNotAccepted"),
            ),
            (
                arrival("berlin.example", "berlin.example", 1, &OPEN),
                Err("HopMismatch"),
            ),
            (
                arrival("berlin.example", "far.example", 0, &OPEN),
                Err("HopMismatch"),
            ),
            (
                arrival("berlin.example", "far.example", 1, &ONE_HOP),
                Err("BeyondMaxHops"),
            ),
        ];
        for ((sender, origin, hops, distribution), expected) in cases {
            let got = policy.admit(&Arrival {
                sender: &sender,
                origin: &origin,
                sender_hops: hops,
                distribution,
                bundle_id: &bundle,
            });
            match (got, expected) {
                (Ok(h), Ok(e)) => assert_eq!(h, e),
                (Err(r), Err(name)) => assert!(format!("{r:?}").starts_with(name), "{r:?}"),
                (got, expected) => {
                    panic!("{sender} {origin} {hops}: {got:?}, expected {expected:?}")
                }
            }
        }
        let elsewhere = Distribution {
            max_hops: None,
            recipients: vec![id("other.example")],
        };
        let refused = policy.admit(&Arrival {
            sender: &id("berlin.example"),
            origin: &id("berlin.example"),
            sender_hops: 0,
            distribution: &elsewhere,
            bundle_id: &bundle,
        });
        assert!(matches!(refused, Err(Refusal::NotARecipient { .. })));
    }

    #[test]
    fn items_past_the_origin_stay_green_and_no_time_lies_beyond_the_skew() {
        let policy = policy();
        let bundle = BundleId::new_random();
        let open = Distribution::default();
        let now = 1_750_000_000_000;
        let berlin = id("berlin.example");
        let far = id("far.example");
        let forwarded = Arrival {
            sender: &berlin,
            origin: &far,
            sender_hops: 1,
            distribution: &open,
            bundle_id: &bundle,
        };
        assert!(
            policy
                .admit_items(&forwarded, [&item(Tlp::Green, now)], now)
                .is_ok()
        );
        assert!(matches!(
            policy.admit_items(&forwarded, [&item(Tlp::Amber, now)], now),
            Err(Refusal::ThirdPartyAboveGreen { .. })
        ));
        let own = Arrival {
            origin: &berlin,
            sender_hops: 0,
            ..forwarded
        };
        assert!(
            policy
                .admit_items(&own, [&item(Tlp::Red, now)], now)
                .is_ok()
        );
        let skew = policy.max_clock_skew_ms();
        assert!(
            policy
                .admit_time(&item(Tlp::Green, now + skew), now)
                .is_ok()
        );
        let soon = policy
            .admit_time(&item(Tlp::Green, now + skew + 1), now)
            .unwrap_err();
        assert!(
            soon.is_transient(),
            "a little ahead may be this clock's fault"
        );
        for far_ahead in [32_503_680_000_000, i64::MAX] {
            let refusal = policy
                .admit_time(&item(Tlp::Green, far_ahead), now)
                .unwrap_err();
            assert!(!refusal.is_transient(), "{refusal}");
        }
    }

    #[test]
    fn an_item_may_name_only_its_origin_among_known_nodes_as_its_creator() {
        let policy = policy();
        let now = 1_700_000_000_000;
        let creating = |node: &str| {
            let mut item = item(Tlp::Green, now);
            if let ItemKind::Indicator(i) = &mut item.kind {
                let mut object = serde_json::Map::new();
                object.insert("created_by_ref".into(), node.into());
                i.properties = crate::model::StixProperties::keep(&object).unwrap();
            }
            item
        };
        let berlin = id("berlin.example");
        let hq = id("hq.example");
        let identity = |n: &str| origin_identity_id(n);
        // Its own origin, an identity outside the federation, or none: kept.
        for creator in [
            identity("berlin.example"),
            "identity--b2b2b2b2-0000-4000-8000-0000000000aa".to_owned(),
            identity("unknown.example"),
        ] {
            assert!(policy.admit_creator(&creating(&creator), &berlin).is_ok());
        }
        assert!(
            policy
                .admit_creator(&item(Tlp::Green, now), &berlin)
                .is_ok()
        );
        // This node's identity or another partner's, on a peer's item: refused, also
        // when the bundle is pulled.
        for named in ["hq.example", "uni.example"] {
            let refusal = policy
                .admit_creator(&creating(&identity(named)), &berlin)
                .unwrap_err();
            assert!(
                matches!(&refusal, Refusal::ForeignCreator { named: n, .. } if n.as_str() == named),
                "{refusal}"
            );
            assert!(!refusal.is_transient());
        }
        let distribution = Distribution::default();
        let bundle = BundleId::new_random();
        let arrival = Arrival {
            sender: &berlin,
            origin: &berlin,
            sender_hops: 0,
            distribution: &distribution,
            bundle_id: &bundle,
        };
        assert!(matches!(
            policy.admit_items(&arrival, [&creating(&identity("hq.example"))], now),
            Err(Refusal::ForeignCreator { .. })
        ));
        // This node's own item naming a partner.
        assert!(
            policy
                .admit_creator(&creating(&identity("berlin.example")), &hq)
                .is_err()
        );
    }
}
