//! Property tests of the sharing policy against the delivery rule (README, "Sharing
//! policy"), quoted here.
//!
//! The oracle below is written from the text of the rule, not from `src/policy.rs`:
//!
//! > Node N discloses item i (of bundle b) to partner P if and only if all of these hold:
//! > 1. P is configured on N (`[[peer]]` or `[[client]]`) and has a policy. Default deny.
//! > 2. P's policy allows i: i's TLP ≤ `max_tlp`; every type i is about is allowed and
//! >    none is denied; if `allow_tags` is set, i has one of them; i has none of
//! >    `deny_tags`. An item is about its own type; a STIX pattern is about the type of
//! >    each value it compares for equality, and about `stix-pattern` as well when it says
//! >    anything else (or names no such value), and then about every typed object that
//! >    other comparison touches. (The items here are patterns of one domain equality.)
//! > 3. If P is a node and N is not b's origin: P's `forward_third_party` is true and i's
//! >    TLP is GREEN or CLEAR.
//! > 4. If P is a node: `hop(N, i) + 1 ≤ max_hops`, and P is in b's recipient list when it
//! >    has one. (A client of N is not a node: rules 3 and 4 do not apply to it.)
//! > 5. Embargo: at least P's `embargo` has passed since N accepted i.
//! > 6. i is the latest version of its id that N holds, and not expired.
//! > 7. If i is a relationship, N holds both its ends and P may be given each of them by
//! >    rules 1–7; if i is a report, P may be given each object it references that N holds.
//!
//! with the documented role defaults: `analyst` and `admin` clients get every marking and
//! every type unless their policy says otherwise; `read_only` partners get `max_tlp` GREEN
//! unless set and no type until `allow_types` names some; `peer` nodes get nothing until
//! both `max_tlp` and `allow_types` are given. A revocation is judged on its own marking and
//! tags and on what the indicator it carries is about; a client may ask for expired indicators
//! (`include_expired`), which waives the expiry part of rule 6 for it. A Get names the
//! item it wants and is answered for an expired indicator too (as `tests/intel.rs` expects);
//! Query and Subscribe follow their filter's `include_expired`. A node is judged against the
//! bundle's distribution; when the context does not know it, nothing goes to a node.
//!
//! `decide_matches_the_delivery_rule` compares `Policy::decide` with the oracle on random
//! configurations, items and contexts. `what_a_client_receives_is_exactly_what_the_policy_allows`
//! runs a node per case and compares what clients get through Query, Get and Subscribe
//! over mutual TLS with the oracle's client path (rules 1, 2, 5 and 6).
//! `spec_built_policies_pull_explain_page_and_revoke_by_the_delivery_rule` compiles
//! policies from typed specs (no configuration file) and checks the engine's paths on a
//! real store: Pull to a peer, Explain to a client, Query paged one item at a time with
//! tokens no other caller can use, and which revocations may be published.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Pki, node_section};
use entente::client::NodeClient;
use entente::engine::now_ms;
use entente::model::{
    Distribution, Indicator, IndicatorType, Item, ItemId, ItemKind, Revocation, Tlp,
};
use entente::policy::{Context, Policy};
use entente::rpc::proto::{ItemFilter, PublishRequest, StoredItem};
use entente::wire;
use entente::{Node, NodeId, Role};
use proptest::prelude::*;
use proptest::sample::subsequence;
use proptest::test_runner::{TestCaseError, TestRunner};

/// Upper bound for any single call or wait.
const DEADLINE: Duration = Duration::from_secs(30);

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The node whose policy is under test.
const NODE: &str = "hq.props";
/// The configured partners of the pure test.
const PEER: &str = "partner.node";
const CLIENT: &str = "partner.client";
/// Another federation node: an origin, and a name in recipient lists.
const OTHER_NODE: &str = "elsewhere.node";
/// A node that is not configured.
const STRANGER: &str = "stranger.node";
/// The policy-bound clients of the end-to-end test, and the analyst that publishes.
const READER: &str = "reader.client";
const ANALYST: &str = "analyst.client";
const PUBLISHER: &str = "publisher.client";

/// Tags that items carry and policies name.
const TAGS: [&str; 4] = ["pii", "campaign-x", "source:honeypot", "internal"];

/// The clock of the pure test.
const NOW_MS: i64 = 1_750_000_000_000;

// ---------------------------------------------------------------------------------------
// Policies as written in the configuration
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A `[[peer]]`.
    Node,
    /// A `[[client]]`.
    Client,
}

/// A list of indicator types as written: `["*"]` or names.
#[derive(Clone, Debug)]
enum Types {
    Star,
    Named(Vec<IndicatorType>),
}

impl Types {
    fn toml(&self) -> String {
        match self {
            Types::Star => "[\"*\"]".to_owned(),
            Types::Named(types) => format!(
                "[{}]",
                types
                    .iter()
                    .map(|t| format!("\"{}\"", t.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn types(&self) -> Vec<IndicatorType> {
        match self {
            Types::Star => IndicatorType::ALL.to_vec(),
            Types::Named(types) => types.clone(),
        }
    }
}

/// One partner's `[[peer]]` or `[[client]]` entry.
#[derive(Clone, Debug)]
struct PolicySpec {
    kind: Kind,
    role: Role,
    /// Whether `role` is written (a peer's role defaults to `peer`).
    role_written: bool,
    max_tlp: Option<Tlp>,
    /// How `max_tlp` is spelled: 0 as is, 1 lower case, 2 with the `TLP:` prefix.
    tlp_spelling: u8,
    allow_types: Option<Types>,
    /// `None`: not written.
    deny_types: Option<Types>,
    allow_tags: Vec<&'static str>,
    deny_tags: Vec<&'static str>,
    /// Peers only; `None`: not written.
    forward_third_party: Option<bool>,
    /// As written, and in ms.
    embargo: Option<(String, i64)>,
}

impl PolicySpec {
    fn toml(&self, id: &str) -> String {
        let mut text = match self.kind {
            Kind::Node => format!("\n[[peer]]\nid = \"{id}\"\naddress = \"127.0.0.1:1\"\n"),
            Kind::Client => format!("\n[[client]]\nid = \"{id}\"\n"),
        };
        if self.role_written {
            text.push_str(&format!("role = \"{}\"\n", self.role.as_str()));
        }
        if let Some(tlp) = self.max_tlp {
            let spelled = match self.tlp_spelling {
                0 => tlp.as_str().to_owned(),
                1 => tlp.as_str().to_ascii_lowercase(),
                _ => format!("TLP:{}", tlp.as_str()),
            };
            text.push_str(&format!("max_tlp = \"{spelled}\"\n"));
        }
        if let Some(types) = &self.allow_types {
            text.push_str(&format!("allow_types = {}\n", types.toml()));
        }
        if let Some(types) = &self.deny_types {
            text.push_str(&format!("deny_types = {}\n", types.toml()));
        }
        let tags = |tags: &[&str]| {
            tags.iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.allow_tags.is_empty() {
            text.push_str(&format!("allow_tags = [{}]\n", tags(&self.allow_tags)));
        }
        if !self.deny_tags.is_empty() {
            text.push_str(&format!("deny_tags = [{}]\n", tags(&self.deny_tags)));
        }
        if let Some(forward) = self.forward_third_party {
            text.push_str(&format!("forward_third_party = {forward}\n"));
        }
        if let Some((embargo, _)) = &self.embargo {
            text.push_str(&format!("embargo = \"{embargo}\"\n"));
        }
        text
    }

    fn embargo_ms(&self) -> i64 {
        self.embargo.as_ref().map_or(0, |(_, ms)| *ms)
    }
}

fn tlp() -> impl Strategy<Value = Tlp> {
    proptest::sample::select(Tlp::ALL.to_vec())
}

/// An indicator type (items generated here are indicators and revocations; policies
/// name every item type).
fn indicator_type() -> impl Strategy<Value = IndicatorType> {
    proptest::sample::select(
        IndicatorType::ALL
            .into_iter()
            .filter(|t| !t.is_context())
            .collect::<Vec<_>>(),
    )
}

fn tags() -> impl Strategy<Value = Vec<&'static str>> {
    subsequence(TAGS.to_vec(), 0..=TAGS.len())
}

/// An item's tags: few, so that allow_tags and deny_tags both matter.
fn item_tags() -> impl Strategy<Value = Vec<&'static str>> {
    subsequence(TAGS.to_vec(), 0..=2)
}

/// Embargoes of any length, including none and "0".
fn any_embargo() -> BoxedStrategy<Option<(String, i64)>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(("0".to_owned(), 0))),
        2 => (1..=48i64).prop_map(|h| Some((format!("{h}h"), h * HOUR_MS))),
        1 => (1..=180i64).prop_map(|m| Some((format!("{m}m"), m * MINUTE_MS))),
        1 => (1..=3i64).prop_map(|d| Some((format!("{d}d"), d * DAY_MS))),
    ]
    .boxed()
}

/// Embargoes whose effect does not depend on timing: none, or a day.
fn settled_embargo() -> BoxedStrategy<Option<(String, i64)>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(("0".to_owned(), 0))),
        1 => Just(Some(("24h".to_owned(), DAY_MS))),
    ]
    .boxed()
}

fn policy_spec(
    kind: Kind,
    roles: Vec<Role>,
    embargo: BoxedStrategy<Option<(String, i64)>>,
) -> impl Strategy<Value = PolicySpec> {
    // Weighted so that each part of rule 2 often lets an item through.
    let allow_types = prop_oneof![
        1 => Just(None),
        2 => Just(Some(Types::Star)),
        3 => subsequence(IndicatorType::ALL.to_vec(), 0..=IndicatorType::ALL.len())
            .prop_map(|t| Some(Types::Named(t))),
    ];
    let deny_types = prop_oneof![
        4 => Just(None),
        4 => subsequence(IndicatorType::ALL.to_vec(), 0..=3).prop_map(|t| Some(Types::Named(t))),
        1 => Just(Some(Types::Star)),
    ];
    let allow_tags = prop_oneof![3 => Just(Vec::new()), 1 => tags()];
    let deny_tags = prop_oneof![3 => Just(Vec::new()), 1 => tags()];
    (
        proptest::sample::select(roles),
        any::<bool>(),
        proptest::option::weighted(0.8, tlp()),
        0..3u8,
        allow_types,
        deny_types,
        (allow_tags, deny_tags),
        proptest::option::weighted(0.8, prop::bool::weighted(0.7)),
        embargo,
    )
        .prop_map(
            move |(
                role,
                write_role,
                max_tlp,
                tlp_spelling,
                allow_types,
                deny_types,
                (allow_tags, deny_tags),
                forward,
                embargo,
            )| PolicySpec {
                kind,
                role,
                // Clients must name their role; a peer's defaults to `peer`.
                role_written: kind == Kind::Client || role != Role::Peer || write_role,
                max_tlp,
                tlp_spelling,
                allow_types,
                deny_types,
                allow_tags,
                deny_tags,
                // forward_third_party applies to peers only (a client's is refused).
                forward_third_party: if kind == Kind::Node { forward } else { None },
                embargo,
            },
        )
}

// ---------------------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------------------

/// Whether the partner belongs to this node's own organisation (analyst and admin clients).
fn own_organisation(spec: &PolicySpec) -> bool {
    spec.kind == Kind::Client && matches!(spec.role, Role::Analyst | Role::Admin)
}

/// `max_tlp` after role defaults; `None` receives nothing.
fn effective_max_tlp(spec: &PolicySpec) -> Option<Tlp> {
    spec.max_tlp.or(if spec.role == Role::ReadOnly {
        Some(Tlp::Green)
    } else if own_organisation(spec) {
        Some(Tlp::Red)
    } else {
        None
    })
}

/// The types allowed after role defaults (empty: none).
fn effective_allow_types(spec: &PolicySpec) -> Vec<IndicatorType> {
    match &spec.allow_types {
        Some(types) => types.types(),
        None if own_organisation(spec) => IndicatorType::ALL.to_vec(),
        None => Vec::new(),
    }
}

/// The types an item of type `ty` made by this file is about (rule 2): its own, except
/// that every STIX pattern generated here (`ItemSpec::item`, `sample_value`, `value_of`)
/// compares one domain name for equality and says nothing else, so it is about a domain
/// only.
fn about(ty: IndicatorType) -> Vec<IndicatorType> {
    match ty {
        IndicatorType::StixPattern => vec![IndicatorType::Domain],
        other => vec![other],
    }
}

/// Rule 2: the partner's policy allows an item of this marking, type and tags.
fn policy_allows(spec: &PolicySpec, tlp: Tlp, ty: IndicatorType, tags: &[String]) -> bool {
    let Some(max_tlp) = effective_max_tlp(spec) else {
        return false;
    };
    let denied = spec.deny_types.as_ref().map_or(Vec::new(), Types::types);
    let has = |names: &[&str]| tags.iter().any(|t| names.contains(&t.as_str()));
    let allowed = effective_allow_types(spec);
    tlp <= max_tlp
        && about(ty)
            .iter()
            .all(|t| allowed.contains(t) && !denied.contains(t))
        && (spec.allow_tags.is_empty() || has(&spec.allow_tags))
        && !has(&spec.deny_tags)
}

/// What the rule needs to know about the item's place on the node.
#[derive(Clone, Debug)]
struct Situation {
    /// This node is the bundle's origin.
    origin_here: bool,
    /// `hop(N, i)`.
    hops: u32,
    /// `(max_hops, recipients)` of the bundle, when known.
    distribution: Option<(Option<u32>, Vec<String>)>,
    /// Time since the node accepted the item, ms.
    elapsed_ms: i64,
    latest: bool,
    include_expired: bool,
    /// The indicator is past its validity.
    expired: bool,
}

/// The delivery rule for partner `partner` (`None`: not configured).
fn delivery_rule(
    spec: Option<&PolicySpec>,
    partner: &str,
    tlp: Tlp,
    ty: IndicatorType,
    tags: &[String],
    s: &Situation,
) -> bool {
    // Rule 1: configured, default deny.
    let Some(spec) = spec else {
        return false;
    };
    // Rule 2.
    if !policy_allows(spec, tlp, ty, tags) {
        return false;
    }
    if spec.kind == Kind::Node {
        // Rule 3: third-party data only when allowed, and only GREEN or CLEAR.
        let may_pass_on = spec.forward_third_party == Some(true) && tlp <= Tlp::Green;
        if !s.origin_here && !may_pass_on {
            return false;
        }
        // Rule 4: hops and recipients; a distribution that is not known admits nobody.
        let Some((max_hops, recipients)) = &s.distribution else {
            return false;
        };
        if max_hops.is_some_and(|max| s.hops + 1 > max) {
            return false;
        }
        if !recipients.is_empty() && !recipients.iter().any(|r| r == partner) {
            return false;
        }
    }
    // Rule 5: at least the embargo has passed.
    if s.elapsed_ms < spec.embargo_ms() {
        return false;
    }
    // Rule 6: latest, and not expired (unless a client asked for expired indicators).
    let expiry_waived = spec.kind == Kind::Client && s.include_expired;
    s.latest && (!s.expired || expiry_waived)
}

// ---------------------------------------------------------------------------------------
// Test 1: Policy::decide against the oracle
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Validity {
    /// No `valid_until`.
    Open,
    /// `valid_until` this long before now.
    Expired(i64),
    /// `valid_until` this long after now.
    Current(i64),
}

impl Validity {
    fn is_expired(self) -> bool {
        matches!(self, Validity::Expired(_))
    }

    /// `(valid_from, valid_until)` around `now`.
    fn range(self, now: i64) -> (i64, Option<i64>) {
        match self {
            Validity::Open => (now - DAY_MS, None),
            Validity::Expired(ago) => (now - ago - HOUR_MS, Some(now - ago)),
            Validity::Current(ahead) => (now - DAY_MS, Some(now + ahead)),
        }
    }
}

fn validity() -> impl Strategy<Value = Validity> {
    prop_oneof![
        2 => Just(Validity::Open),
        1 => (MINUTE_MS..30 * DAY_MS).prop_map(Validity::Expired),
        1 => (MINUTE_MS..30 * DAY_MS).prop_map(Validity::Current),
    ]
}

#[derive(Clone, Debug)]
struct ItemSpec {
    tlp: Tlp,
    ty: IndicatorType,
    tags: Vec<&'static str>,
    /// A revocation (carrying `ty`) rather than an indicator.
    revocation: bool,
    validity: Validity,
}

fn item_spec() -> impl Strategy<Value = ItemSpec> {
    (
        tlp(),
        indicator_type(),
        item_tags(),
        prop::bool::weighted(0.25),
        validity(),
    )
        .prop_map(|(tlp, ty, tags, revocation, validity)| ItemSpec {
            tlp,
            ty,
            tags,
            revocation,
            validity,
        })
}

impl ItemSpec {
    fn item(&self) -> Item {
        let (valid_from_ms, valid_until_ms) = self.validity.range(NOW_MS);
        let indicator = Indicator {
            indicator_type: self.ty,
            value: match self.ty {
                IndicatorType::StixPattern => {
                    "[domain-name:value = 'value.props.example']".to_owned()
                }
                _ => "value.props.example".to_owned(),
            },
            description: String::new(),
            confidence: 50,
            kill_chain_phases: Vec::new(),
            valid_from_ms,
            valid_until_ms,
            properties: Default::default(),
        };
        let kind = if self.revocation {
            // A revocation carries the indicator it revokes, and is about what it is.
            ItemKind::Revocation(Revocation {
                indicator_type: self.ty,
                reason: "withdrawn".to_owned(),
                indicator: Some(Box::new(indicator)),
            })
        } else {
            ItemKind::Indicator(indicator)
        };
        Item {
            id: ItemId::new_random(),
            modified_ms: NOW_MS - DAY_MS,
            tlp: self.tlp,
            tags: self.tags.iter().map(|t| (*t).to_owned()).collect(),
            kind,
        }
    }

    /// Revocations carry no validity and never expire.
    fn expired(&self) -> bool {
        !self.revocation && self.validity.is_expired()
    }
}

/// How long ago the node accepted the item.
#[derive(Clone, Copy, Debug)]
enum Age {
    /// This many ms.
    Ms(i64),
    /// The embargo of the peer (`true`) or of the client, plus this many ms (at least 0
    /// in all): ages on and around the end of an embargo.
    AroundEmbargo(bool, i64),
}

impl Age {
    fn ms(self, peer: &PolicySpec, client: &PolicySpec) -> i64 {
        match self {
            Age::Ms(ms) => ms,
            Age::AroundEmbargo(of_peer, delta) => {
                let embargo = if of_peer { peer } else { client }.embargo_ms();
                (embargo + delta).max(0)
            }
        }
    }
}

#[derive(Clone, Debug)]
struct ContextSpec {
    origin_here: bool,
    hops: u32,
    /// `(max_hops, recipients)`; `None`: not known.
    distribution: Option<(Option<u32>, Vec<&'static str>)>,
    accepted: Age,
    latest: bool,
    include_expired: bool,
}

fn context_spec() -> impl Strategy<Value = ContextSpec> {
    let distribution = prop_oneof![
        1 => Just(None),
        12 => (
            proptest::option::of(0..=4u32),
            prop_oneof![
                1 => Just(Vec::new()),
                1 => subsequence(vec![PEER, CLIENT, OTHER_NODE, STRANGER, NODE], 0..=5),
            ],
        )
            .prop_map(Some),
    ];
    let accepted = prop_oneof![
        2 => (0..=4 * DAY_MS).prop_map(Age::Ms),
        1 => (4 * DAY_MS..=30 * DAY_MS).prop_map(Age::Ms),
        3 => (
            any::<bool>(),
            prop_oneof![
                Just(0),
                Just(-1),
                Just(1),
                -HOUR_MS..=HOUR_MS,
            ],
        )
            .prop_map(|(of_peer, delta)| Age::AroundEmbargo(of_peer, delta)),
    ];
    (
        any::<bool>(),
        0..=4u32,
        distribution,
        accepted,
        prop::bool::weighted(0.85),
        any::<bool>(),
    )
        .prop_map(
            |(origin_here, hops, distribution, accepted, latest, include_expired)| ContextSpec {
                origin_here,
                // The origin holds its own items at hop 0.
                hops: if origin_here { 0 } else { hops.max(1) },
                distribution,
                accepted,
                latest,
                include_expired,
            },
        )
}

fn id(name: &str) -> NodeId {
    NodeId::new(name).expect("valid node id")
}

fn no_regressions_file(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// What a node holds, as policy asks it: the ends of the relationship under test.
struct Ends(BTreeMap<ItemId, entente::policy::HeldItem>);

impl entente::policy::Held for Ends {
    fn held(&self, id: &ItemId, _: bool) -> Option<entente::policy::HeldItem> {
        self.0.get(id).cloned()
    }
}

/// The situation of an item held as `ctx` says, as the latest version of its id (what a
/// node looks up is always the latest).
fn situation_of(
    ctx: &ContextSpec,
    item: &ItemSpec,
    peer: &PolicySpec,
    client: &PolicySpec,
    include_expired: bool,
) -> Situation {
    Situation {
        origin_here: ctx.origin_here,
        hops: ctx.hops,
        distribution: ctx.distribution.as_ref().map(|(max_hops, recipients)| {
            (
                *max_hops,
                recipients.iter().map(|r| (*r).to_owned()).collect(),
            )
        }),
        elapsed_ms: ctx.accepted.ms(peer, client),
        latest: true,
        include_expired,
        expired: item.expired(),
    }
}

#[test]
fn relationships_go_only_where_both_ends_go() {
    let pki = Pki::new();
    let node = pki.node(NODE);
    let dir = tempfile::tempdir().expect("temp dir");
    let head = node_section(&pki, &node, &dir.path().join("data"));
    let config_path = dir.path().join("node.toml");
    let here = id(NODE);
    let elsewhere = id(OTHER_NODE);
    let strategy = (
        policy_spec(Kind::Node, vec![Role::Peer, Role::ReadOnly], any_embargo()),
        policy_spec(
            Kind::Client,
            vec![Role::ReadOnly, Role::Analyst, Role::Admin],
            any_embargo(),
        ),
        (item_spec(), context_spec()),
        (item_spec(), context_spec()),
        (tlp(), item_tags(), context_spec()),
        prop::bool::ANY,
    );
    let allowed = AtomicUsize::new(0);
    let config = no_regressions_file(1000);
    let mut runner = TestRunner::new_with_rng(
        config.clone(),
        proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm),
    );
    let result = runner.run(
        &strategy,
        |(peer, client, (a, a_ctx), (b, b_ctx), (tlp, tags, ctx), held_both)| {
            let text = format!("{head}{}{}", peer.toml(PEER), client.toml(CLIENT));
            std::fs::write(&config_path, &text).expect("write config");
            let config = entente::Config::load(&config_path)
                .map_err(|e| TestCaseError::fail(format!("config refused: {e}\n{text}")))?;
            let policy = Policy::compile(&config.policy_spec());
            let distribution = |ctx: &ContextSpec| {
                ctx.distribution
                    .as_ref()
                    .map(|(max_hops, recipients)| Distribution {
                        max_hops: *max_hops,
                        recipients: recipients.iter().map(|r| id(r)).collect(),
                    })
            };
            let held_item = |spec: &ItemSpec, ctx: &ContextSpec| entente::policy::HeldItem {
                item: spec.item(),
                origin: if ctx.origin_here {
                    here.clone()
                } else {
                    elsewhere.clone()
                },
                hops: ctx.hops,
                distribution: distribution(ctx),
                accepted_ms: NOW_MS - ctx.accepted.ms(&peer, &client),
            };
            let (a_held, b_held) = (held_item(&a, &a_ctx), held_item(&b, &b_ctx));
            let mut held = BTreeMap::new();
            held.insert(a_held.item.id.clone(), a_held.clone());
            // Sometimes the target is not held here.
            if held_both {
                held.insert(b_held.item.id.clone(), b_held.clone());
            }
            let ends = Ends(held);
            let relationship = Item {
                id: ItemId::parse(&format!("relationship--{}", uuid::Uuid::new_v4()))
                    .expect("an id"),
                modified_ms: NOW_MS - DAY_MS,
                tlp,
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                kind: ItemKind::Context(entente::model::ContextObject {
                    object_type: IndicatorType::Relationship,
                    refs: vec![a_held.item.id.clone(), b_held.item.id.clone()],
                    properties: entente::model::StixProperties::keep_for(
                        entente::model::Holder::Context,
                        serde_json::json!({"relationship_type": "indicates"})
                            .as_object()
                            .expect("an object"),
                    )
                    .expect("kept"),
                }),
            };
            relationship
                .validate()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let rel_distribution = distribution(&ctx);
            let context = Context {
                origin: if ctx.origin_here { &here } else { &elsewhere },
                hops: ctx.hops,
                distribution: rel_distribution.as_ref(),
                accepted_ms: NOW_MS - ctx.accepted.ms(&peer, &client),
                now_ms: NOW_MS,
                latest: ctx.latest,
                include_expired: ctx.include_expired,
                held: &ends,
            };
            let mut rel_situation = situation_of(&ctx, &a, &peer, &client, ctx.include_expired);
            rel_situation.latest = ctx.latest;
            rel_situation.expired = false;
            let a_situation = situation_of(&a_ctx, &a, &peer, &client, ctx.include_expired);
            let b_situation = situation_of(&b_ctx, &b, &peer, &client, ctx.include_expired);
            for (partner, spec) in [
                (PEER, Some(&peer)),
                (CLIENT, Some(&client)),
                (STRANGER, None),
            ] {
                let decision = policy.decide(&id(partner), &relationship, &context);
                let rule = |tlp, ty, tags: &[String], s: &Situation| {
                    delivery_rule(spec, partner, tlp, ty, tags, s)
                };
                let a_item = a.item();
                let b_item = b.item();
                let expected = rule(
                    relationship.tlp,
                    IndicatorType::Relationship,
                    &relationship.tags,
                    &rel_situation,
                ) && held_both
                    && rule(a_item.tlp, a.ty, &a_item.tags, &a_situation)
                    && rule(b_item.tlp, b.ty, &b_item.tags, &b_situation);
                prop_assert_eq!(
                    decision.allowed(),
                    expected,
                    "partner {} under\n{}\nends {:?} {:?} / {:?} {:?} (target held: {})\nrelationship {:?} {:?} {:?}\ndecide said: {}",
                    partner,
                    text,
                    a,
                    a_ctx,
                    b,
                    b_ctx,
                    held_both,
                    tlp,
                    tags,
                    ctx,
                    decision.rule
                );
                if expected {
                    allowed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generators must reach relationships that go through.
    assert!(
        allowed.into_inner() > 0,
        "no case let a relationship through"
    );
}

#[test]
fn decide_matches_the_delivery_rule() {
    let pki = Pki::new();
    let node = pki.node(NODE);
    let dir = tempfile::tempdir().expect("temp dir");
    let head = node_section(&pki, &node, &dir.path().join("data"));
    let config_path = dir.path().join("node.toml");
    let here = id(NODE);
    let elsewhere = id(OTHER_NODE);

    let strategy = (
        policy_spec(Kind::Node, vec![Role::Peer, Role::ReadOnly], any_embargo()),
        policy_spec(
            Kind::Client,
            vec![Role::ReadOnly, Role::Analyst, Role::Admin],
            any_embargo(),
        ),
        item_spec(),
        context_spec(),
    );
    // How many cases let an item through to the peer (of them, third-party items) and
    // to the client: the generators must reach the far end of the rule.
    let to_peer = AtomicUsize::new(0);
    let third_party_to_peer = AtomicUsize::new(0);
    let to_client = AtomicUsize::new(0);
    // A fixed seed: the same cases on every run, so a failure reproduces.
    let config = no_regressions_file(2000);
    let mut runner = TestRunner::new_with_rng(
        config.clone(),
        proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm),
    );
    let result = runner.run(&strategy, |(peer, client, item_spec, ctx)| {
        let text = format!("{head}{}{}", peer.toml(PEER), client.toml(CLIENT));
        std::fs::write(&config_path, &text).expect("write config");
        let config = entente::Config::load(&config_path)
            .map_err(|e| TestCaseError::fail(format!("config refused: {e}\n{text}")))?;
        let policy = Policy::compile(&config.policy_spec());

        let item = item_spec.item();
        let distribution = ctx
            .distribution
            .as_ref()
            .map(|(max_hops, recipients)| Distribution {
                max_hops: *max_hops,
                recipients: recipients.iter().map(|r| id(r)).collect(),
            });
        let accepted_ago_ms = ctx.accepted.ms(&peer, &client);
        let context = Context {
            origin: if ctx.origin_here { &here } else { &elsewhere },
            hops: ctx.hops,
            distribution: distribution.as_ref(),
            accepted_ms: NOW_MS - accepted_ago_ms,
            now_ms: NOW_MS,
            latest: ctx.latest,
            include_expired: ctx.include_expired,
            // The items generated here reference nothing.
            held: &entente::policy::NothingHeld,
        };
        let situation = Situation {
            origin_here: ctx.origin_here,
            hops: ctx.hops,
            distribution: ctx.distribution.as_ref().map(|(max_hops, recipients)| {
                (
                    *max_hops,
                    recipients.iter().map(|r| (*r).to_owned()).collect(),
                )
            }),
            elapsed_ms: accepted_ago_ms,
            latest: ctx.latest,
            include_expired: ctx.include_expired,
            expired: item_spec.expired(),
        };
        for (partner, spec) in [
            (PEER, Some(&peer)),
            (CLIENT, Some(&client)),
            (STRANGER, None),
        ] {
            let decision = policy.decide(&id(partner), &item, &context);
            let prefix = if decision.allowed() {
                "allowed:"
            } else {
                "withheld:"
            };
            prop_assert!(
                decision.rule.to_string().starts_with(prefix),
                "{partner}: allow = {} but the rule reads {:?}",
                decision.allowed(),
                decision.rule
            );
            let expected = delivery_rule(
                spec,
                partner,
                item.tlp,
                item_spec.ty,
                &item.tags,
                &situation,
            );
            prop_assert_eq!(
                decision.allowed(),
                expected,
                "partner {} under\n{}\nitem {:?}\ncontext {:?}\ndecide said: {}",
                partner,
                text,
                item_spec,
                ctx,
                decision.rule
            );
            if expected {
                match partner {
                    PEER if ctx.origin_here => &to_peer,
                    PEER => &third_party_to_peer,
                    _ => &to_client,
                }
                .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let counts = [
        to_peer.into_inner(),
        third_party_to_peer.into_inner(),
        to_client.into_inner(),
    ];
    assert!(
        counts.iter().all(|&n| n >= 10),
        "too few items let through (own items to the peer, third-party items to the peer, to the client): {counts:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Test 2: what clients receive over mutual TLS
// ---------------------------------------------------------------------------------------

/// One item the publisher sends, and optionally its later revocation.
#[derive(Clone, Debug)]
struct Published {
    tlp: Tlp,
    ty: IndicatorType,
    tags: Vec<&'static str>,
    validity: Validity,
    /// Revoked later (with the indicator's marking, type and tags).
    revoked: bool,
}

fn published() -> impl Strategy<Value = Published> {
    let validity = prop_oneof![
        Just(Validity::Open),
        Just(Validity::Expired(HOUR_MS)),
        Just(Validity::Current(DAY_MS)),
    ];
    (
        tlp(),
        indicator_type(),
        tags(),
        validity,
        prop::bool::weighted(0.25),
    )
        .prop_map(|(tlp, ty, tags, validity, revoked)| Published {
            tlp,
            ty,
            tags,
            validity,
            revoked,
        })
}

#[derive(Clone, Debug)]
struct EndToEnd {
    reader: PolicySpec,
    analyst: PolicySpec,
    items: Vec<Published>,
    /// Which client subscribes first (the other when this one may see nothing).
    reader_subscribes: bool,
    subscribe_include_expired: bool,
    page_size: u32,
}

fn end_to_end() -> impl Strategy<Value = EndToEnd> {
    (
        policy_spec(Kind::Client, vec![Role::ReadOnly], settled_embargo()),
        policy_spec(
            Kind::Client,
            vec![Role::Analyst, Role::Admin],
            settled_embargo(),
        ),
        proptest::collection::vec(published(), 15..=25),
        any::<bool>(),
        any::<bool>(),
        1..=8u32,
    )
        .prop_map(
            |(reader, analyst, items, reader_subscribes, subscribe_include_expired, page_size)| {
                EndToEnd {
                    reader,
                    analyst,
                    items,
                    reader_subscribes,
                    subscribe_include_expired,
                    page_size,
                }
            },
        )
}

/// One published version of an item, as the oracle sees it.
#[derive(Clone, Debug)]
struct Version {
    id: String,
    modified_ms: i64,
    tlp: Tlp,
    ty: IndicatorType,
    tags: Vec<String>,
    expired: bool,
}

impl Version {
    /// Rules 1, 2, 5 and 6 on the client path: this node is the origin, and items are
    /// judged within a few minutes of being accepted, so a day's embargo has not passed
    /// and no embargo at all has.
    fn visible(&self, spec: &PolicySpec, latest: bool, include_expired: bool) -> bool {
        let situation = Situation {
            origin_here: true,
            hops: 0,
            distribution: None,
            elapsed_ms: 0,
            latest,
            include_expired,
            expired: self.expired,
        };
        delivery_rule(Some(spec), "", self.tlp, self.ty, &self.tags, &situation)
    }

    fn key(&self) -> (String, i64) {
        (self.id.clone(), self.modified_ms)
    }
}

/// A value of type `ty`, distinct for each `n`, in normal form.
fn value_of(ty: IndicatorType, n: usize) -> String {
    match ty {
        IndicatorType::Ipv4 => format!("10.77.{}.{}", n / 256, n % 256),
        IndicatorType::Ipv6 => format!("2001:db8::{:x}", n + 1),
        IndicatorType::Cidr => format!("10.{}.0.0/16", n % 256),
        IndicatorType::Domain => format!("d{n}.props.example"),
        IndicatorType::Url => format!("http://u{n}.props.example/p"),
        IndicatorType::Email => format!("e{n}@props.example"),
        IndicatorType::Md5 => format!("{:032x}", n + 1),
        IndicatorType::Sha1 => format!("{:040x}", n + 1),
        IndicatorType::Sha256 => format!("{:064x}", n + 1),
        IndicatorType::StixPattern => format!("[domain-name:value = 's{n}.props.example']"),
        context => panic!("{context} is not an indicator type"),
    }
}

fn wire_tlp(tlp: Tlp) -> wire::Tlp {
    match tlp {
        Tlp::Clear => wire::Tlp::Clear,
        Tlp::Green => wire::Tlp::Green,
        Tlp::Amber => wire::Tlp::Amber,
        Tlp::AmberStrict => wire::Tlp::AmberStrict,
        Tlp::Red => wire::Tlp::Red,
    }
}

fn wire_indicator(
    id: &str,
    modified_ms: i64,
    tlp: Tlp,
    ty: IndicatorType,
    tags: &[String],
    value: String,
    (valid_from, valid_until): (i64, Option<i64>),
) -> wire::Item {
    wire::Item {
        id: id.to_owned(),
        modified_unix_ms: modified_ms,
        tlp: wire_tlp(tlp) as i32,
        tags: tags.to_vec(),
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: ty.as_str().to_owned(),
            value,
            valid_from_unix_ms: valid_from,
            valid_until_unix_ms: valid_until,
            ..Default::default()
        })),
    }
}

fn wire_revocation(version: &Version) -> wire::Item {
    wire::Item {
        id: version.id.clone(),
        modified_unix_ms: version.modified_ms,
        tlp: wire_tlp(version.tlp) as i32,
        tags: version.tags.clone(),
        kind: Some(wire::item::Kind::Revocation(wire::Revocation {
            reason: "withdrawn by the publisher".to_owned(),
            indicator_type: version.ty.as_str().to_owned(),
            indicator: None,
        })),
    }
}

/// Awaits `future`, failing the case if it takes longer than [`DEADLINE`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> Result<T, TestCaseError> {
    tokio::time::timeout(DEADLINE, future)
        .await
        .map_err(|_| TestCaseError::fail(format!("{what} did not finish within {DEADLINE:?}")))
}

fn fail(what: &str, e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("{what}: {e}"))
}

async fn connect(pki: &Pki, node: &Node, who: &str) -> Result<NodeClient, TestCaseError> {
    let who = id(who);
    let material = pki.material(&who);
    let tls = material
        .client_config()
        .map_err(|e| fail("client TLS", e))?;
    within(
        "connect",
        NodeClient::connect(tls, &who, &node.local_addr().to_string(), &id(NODE)),
    )
    .await?
    .map_err(|e| fail(&format!("{who} connects"), e))
}

/// Publishes `items` as one bundle; every item must be accepted.
async fn publish(client: &NodeClient, items: Vec<wire::Item>) -> Result<(), TestCaseError> {
    let count = items.len() as u64;
    let request = PublishRequest {
        items,
        ..Default::default()
    };
    let response = within("publish", client.publish(tokio_stream::iter([request])))
        .await?
        .map_err(|e| fail("publish", e))?;
    prop_assert_eq!(response.items_accepted, count, "{:?}", response);
    Ok(())
}

fn key_of(stored: &StoredItem) -> (String, i64) {
    let item = stored.item.as_ref().expect("a stored item has content");
    (item.id.clone(), item.modified_unix_ms)
}

/// Every `(id, version)` a query for everything returns, following the pages to the end.
async fn query_all(
    client: &NodeClient,
    include_expired: bool,
    page_size: u32,
) -> Result<Vec<(String, i64)>, TestCaseError> {
    let filter = ItemFilter {
        include_expired,
        ..Default::default()
    };
    let mut found = Vec::new();
    let mut token = Vec::new();
    for _ in 0..1000 {
        let page = within("query", client.query(filter.clone(), page_size, token))
            .await?
            .map_err(|e| fail("query", e))?;
        prop_assert!(page.items.len() <= page_size as usize);
        found.extend(page.items.iter().map(key_of));
        if page.next_page_token.is_empty() {
            return Ok(found);
        }
        token = page.next_page_token;
    }
    Err(TestCaseError::fail("a query did not end after 1000 pages"))
}

/// Items of a subscription up to and including `last`, as `(id, version)`.
async fn read_until(
    stream: &mut tonic::Streaming<StoredItem>,
    last: &str,
) -> Result<Vec<(String, i64)>, TestCaseError> {
    let mut received = Vec::new();
    loop {
        let item = match within("subscription", stream.message()).await? {
            Ok(Some(item)) => item,
            Ok(None) => return Err(TestCaseError::fail("the subscription ended")),
            Err(status) => return Err(fail("the subscription failed", status)),
        };
        let key = key_of(&item);
        let done = key.0 == last;
        received.push(key);
        if done {
            return Ok(received);
        }
    }
}

/// Fails unless a client received exactly the `(id, version)`s expected, naming the
/// differences and every published version of the ids concerned.
fn same_versions(
    what: &str,
    got: &BTreeSet<(String, i64)>,
    expected: &BTreeSet<(String, i64)>,
    versions: &[Version],
) -> Result<(), TestCaseError> {
    if got == expected {
        return Ok(());
    }
    let missing: Vec<_> = expected.difference(got).collect();
    let unexpected: Vec<_> = got.difference(expected).collect();
    let concerned: Vec<&Version> = versions
        .iter()
        .filter(|v| missing.iter().chain(&unexpected).any(|(id, _)| *id == v.id))
        .collect();
    Err(TestCaseError::fail(format!(
        "{what}: withheld although the rule allows them: {missing:?}; disclosed although \
         the rule withholds them: {unexpected:?}; every version of these ids, in the order \
         published: {concerned:#?}"
    )))
}

/// A marking, type and tags that `spec` lets through, if there is one.
fn visible_shape(spec: &PolicySpec) -> Option<(Tlp, IndicatorType, Vec<String>)> {
    let tag_sets: Vec<Vec<String>> = std::iter::once(Vec::new())
        .chain(TAGS.iter().map(|t| vec![(*t).to_owned()]))
        .collect();
    for tlp in Tlp::ALL {
        for ty in IndicatorType::ALL.into_iter().filter(|t| !t.is_context()) {
            for tags in &tag_sets {
                let probe = Version {
                    id: String::new(),
                    modified_ms: 0,
                    tlp,
                    ty,
                    tags: tags.clone(),
                    expired: false,
                };
                if probe.visible(spec, true, false) {
                    return Some((tlp, ty, tags.clone()));
                }
            }
        }
    }
    None
}

/// Cases in which a subscription was checked.
static SUBSCRIBED: AtomicUsize = AtomicUsize::new(0);

async fn run_end_to_end(pki: &Pki, case: &EndToEnd) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| fail("temp dir", e))?;
    let text = format!(
        "{}{}{}\n[[client]]\nid = \"{PUBLISHER}\"\nrole = \"analyst\"\n",
        node_section(pki, &id(NODE), &dir.path().join("data")),
        case.reader.toml(READER),
        case.analyst.toml(ANALYST),
    );
    let config_path = dir.path().join("node.toml");
    std::fs::write(&config_path, &text).map_err(|e| fail("write config", e))?;
    let config = entente::Config::load(&config_path)
        .map_err(|e| fail(&format!("config refused\n{text}"), e))?;
    let node = within("node start", Node::start(config))
        .await?
        .map_err(|e| fail("node start", e))?;
    let outcome = check_clients(pki, &node, case).await;
    within("shutdown", node.shutdown(DEADLINE))
        .await?
        .map_err(|e| fail("shutdown", e))?;
    outcome.map_err(|e| TestCaseError::fail(format!("{e}\nconfig:\n{text}")))
}

async fn check_clients(pki: &Pki, node: &Node, case: &EndToEnd) -> Result<(), TestCaseError> {
    let publisher = connect(pki, node, PUBLISHER).await?;
    let reader = connect(pki, node, READER).await?;
    let analyst = connect(pki, node, ANALYST).await?;
    let clients = [
        (READER, &case.reader, &reader),
        (ANALYST, &case.analyst, &analyst),
    ];

    let t0 = now_ms();
    // Every version published, in order; values are numbered from 0.
    let mut versions: Vec<Version> = Vec::new();
    let mut next_value = 0;
    let mut new_indicator = |tlp, ty, tags: Vec<String>, validity: Validity, modified_ms| {
        next_value += 1;
        let version = Version {
            id: ItemId::new_random().to_string(),
            modified_ms,
            tlp,
            ty,
            tags,
            expired: validity.is_expired(),
        };
        let item = wire_indicator(
            &version.id,
            modified_ms,
            tlp,
            ty,
            &version.tags,
            value_of(ty, next_value),
            validity.range(t0),
        );
        (version, item)
    };

    // The subscriber, and a shape of item it may see for the markers.
    let subscription = {
        let order = if case.reader_subscribes {
            [clients[0], clients[1]]
        } else {
            [clients[1], clients[0]]
        };
        order.into_iter().find_map(|(name, spec, client)| {
            visible_shape(spec).map(|shape| (name, spec, client, shape))
        })
    };
    let mut stream = None;
    let mut marker_shape = None;
    if let Some((name, spec, client, shape)) = subscription {
        let filter = ItemFilter {
            include_expired: case.subscribe_include_expired,
            ..Default::default()
        };
        let mut s = within("subscribe", client.subscribe(filter))
            .await?
            .map_err(|e| fail("subscribe", e))?;
        // Once the first marker arrives, the subscription is live.
        let (tlp, ty, tags) = shape.clone();
        let (marker, item) = new_indicator(tlp, ty, tags, Validity::Open, 0);
        publish(&publisher, vec![item]).await?;
        let first = read_until(&mut s, &marker.id).await?;
        prop_assert_eq!(
            first.len(),
            1,
            "{} received {:?} before the marker",
            name,
            first
        );
        versions.push(Version {
            modified_ms: first[0].1,
            ..marker
        });
        stream = Some((name, spec, s));
        marker_shape = Some(shape);
        SUBSCRIBED.fetch_add(1, Ordering::Relaxed);
    }

    // The random items, as one bundle, each with its own version; versions are in the
    // past, a revocation one second after the indicator it revokes.
    let base = t0 - 10 * MINUTE_MS;
    let mut indicators = Vec::new();
    let mut batch = Vec::new();
    for (n, p) in case.items.iter().enumerate() {
        let tags = p.tags.iter().map(|t| (*t).to_owned()).collect();
        let (version, item) = new_indicator(p.tlp, p.ty, tags, p.validity, base + n as i64);
        indicators.push(version);
        batch.push(item);
    }
    let mut revocations = Vec::new();
    for (p, indicator) in case.items.iter().zip(&indicators) {
        // A revocation carries the revoked indicator's marking, type and tags (one that
        // does not is refused at publish: tests/leaks.rs).
        if p.revoked {
            revocations.push(Version {
                id: indicator.id.clone(),
                modified_ms: indicator.modified_ms + 1000,
                tlp: indicator.tlp,
                ty: indicator.ty,
                tags: indicator.tags.clone(),
                expired: false,
            });
        }
    }

    // Publishes a marker the subscriber may see and reads up to it: every version
    // published before it has then been delivered or withheld.
    let mut received = Vec::new();
    macro_rules! drain_subscription {
        () => {
            if let (Some((_, _, s)), Some((tlp, ty, tags))) = (stream.as_mut(), &marker_shape) {
                let (marker, item) = new_indicator(*tlp, *ty, tags.clone(), Validity::Open, 0);
                publish(&publisher, vec![item]).await?;
                let got = read_until(s, &marker.id).await?;
                let version = got.last().map_or(0, |k| k.1);
                received.extend(got);
                versions.push(Version {
                    modified_ms: version,
                    ..marker
                });
            }
        };
    }
    publish(&publisher, batch).await?;
    versions.extend(indicators);
    // Each version reaches the subscriber while it is the latest one held.
    drain_subscription!();
    if !revocations.is_empty() {
        publish(
            &publisher,
            revocations.iter().map(wire_revocation).collect(),
        )
        .await?;
        versions.extend(revocations);
        drain_subscription!();
    }

    if let Some((name, spec, _)) = &stream {
        // The first marker was read on its own; everything after it, each once.
        let expected: BTreeSet<(String, i64)> = versions[1..]
            .iter()
            .filter(|v| v.visible(spec, true, case.subscribe_include_expired))
            .map(Version::key)
            .collect();
        let got: BTreeSet<(String, i64)> = received.iter().cloned().collect();
        prop_assert_eq!(
            got.len(),
            received.len(),
            "{} received a version twice",
            name
        );
        same_versions(
            &format!(
                "{name}'s subscription (include_expired = {})",
                case.subscribe_include_expired
            ),
            &got,
            &expected,
            &versions,
        )?;
    }

    // The latest version of each id.
    let mut latest: BTreeMap<String, &Version> = BTreeMap::new();
    for v in &versions {
        let entry = latest.entry(v.id.clone()).or_insert(v);
        if v.modified_ms > entry.modified_ms {
            *entry = v;
        }
    }

    let publisher_spec = PolicySpec {
        kind: Kind::Client,
        role: Role::Analyst,
        role_written: true,
        max_tlp: None,
        tlp_spelling: 0,
        allow_types: None,
        deny_types: None,
        allow_tags: Vec::new(),
        deny_tags: Vec::new(),
        forward_third_party: None,
        embargo: None,
    };
    for (name, spec, client) in
        clients
            .into_iter()
            .chain([(PUBLISHER, &publisher_spec, &publisher)])
    {
        // Query for everything, with and without expired indicators.
        for include_expired in [false, true] {
            let found = query_all(client, include_expired, case.page_size).await?;
            let got: BTreeSet<(String, i64)> = found.iter().cloned().collect();
            prop_assert_eq!(
                got.len(),
                found.len(),
                "{}'s query returned an item twice",
                name
            );
            let expected: BTreeSet<(String, i64)> = latest
                .values()
                .filter(|v| v.visible(spec, true, include_expired))
                .map(|v| v.key())
                .collect();
            same_versions(
                &format!(
                    "{name}'s query (include_expired = {include_expired}, page size {})",
                    case.page_size
                ),
                &got,
                &expected,
                &versions,
            )?;
        }
        // Get every id. A Get names the item it wants, so expired indicators are
        // answered (as in tests/intel.rs); every other rule applies.
        let mut got = BTreeSet::new();
        for item_id in latest.keys() {
            if let Some(stored) = within("get", client.get(item_id))
                .await?
                .map_err(|e| fail("get", e))?
            {
                got.insert(key_of(&stored));
            }
        }
        let expected: BTreeSet<(String, i64)> = latest
            .values()
            .filter(|v| v.visible(spec, true, true))
            .map(|v| v.key())
            .collect();
        same_versions(&format!("{name}'s gets"), &got, &expected, &versions)?;
    }
    Ok(())
}

#[test]
fn what_a_client_receives_is_exactly_what_the_policy_allows() {
    let pki = Pki::new();
    pki.node(NODE);
    for who in [READER, ANALYST, PUBLISHER] {
        pki.client(who);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let config = ProptestConfig {
        max_shrink_iters: 64,
        ..no_regressions_file(24)
    };
    // A fixed seed: the same cases on every run, so a failure reproduces.
    let mut runner = TestRunner::new_with_rng(
        config.clone(),
        proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm),
    );
    let result = runner.run(&end_to_end(), |case| {
        runtime.block_on(run_end_to_end(&pki, &case))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        SUBSCRIBED.load(Ordering::Relaxed) > 0,
        "no case had a client that may see anything, so Subscribe was never checked"
    );
}

// ---------------------------------------------------------------------------------------
// Policies built from typed specs, through the engine's paths
// ---------------------------------------------------------------------------------------

impl PolicySpec {
    /// The same policy as [`PolicySpec::toml`] writes, as the typed spec `policy` compiles.
    fn settings(&self) -> entente::policy::PolicySettings {
        let tags = |tags: &[&str]| tags.iter().map(|t| (*t).to_owned()).collect();
        entente::policy::PolicySettings {
            max_tlp: self.max_tlp,
            allow_types: self.allow_types.as_ref().map(Types::types),
            deny_types: self.deny_types.as_ref().map_or(Vec::new(), Types::types),
            allow_tags: tags(&self.allow_tags),
            deny_tags: tags(&self.deny_tags),
            forward_third_party: self.forward_third_party.unwrap_or(false),
            embargo_ms: self.embargo_ms(),
        }
    }

    fn partner(&self, id: &str) -> entente::model::Partner {
        entente::model::Partner {
            id: NodeId::new(id).unwrap(),
            kind: match self.kind {
                Kind::Node => entente::model::PartnerKind::Node,
                Kind::Client => entente::model::PartnerKind::Client,
            },
            role: self.role,
        }
    }
}

/// One case of the engine-path test: the two partners' policies, a bundle of items this
/// node publishes with its distribution, and a revocation attempt.
#[derive(Clone, Debug)]
struct EngineCase {
    peer: PolicySpec,
    client: PolicySpec,
    items: Vec<(Tlp, IndicatorType, Vec<&'static str>, Validity)>,
    distribution: (Option<u32>, Vec<&'static str>),
    /// Which item is revoked, and the revocation's marking, type and tags.
    revocation: (usize, Tlp, IndicatorType, Vec<&'static str>),
}

fn engine_case() -> impl Strategy<Value = EngineCase> {
    (
        policy_spec(
            Kind::Node,
            vec![Role::Peer, Role::ReadOnly],
            settled_embargo(),
        ),
        policy_spec(
            Kind::Client,
            vec![Role::ReadOnly, Role::Analyst, Role::Admin],
            settled_embargo(),
        ),
        proptest::collection::vec((tlp(), indicator_type(), item_tags(), validity()), 1..12),
        (
            proptest::option::weighted(0.5, 0..3u32),
            subsequence(vec![PEER, OTHER_NODE], 0..=2),
        ),
        (
            any::<usize>(),
            any::<bool>(),
            tlp(),
            indicator_type(),
            item_tags(),
        ),
    )
        .prop_map(
            |(peer, client, items, distribution, (at, faithful, tlp, ty, tags))| {
                let at = at % items.len();
                // Half the revocations carry their item's marking, type and tags.
                let revocation = if faithful {
                    let (tlp, ty, tags, _) = items[at].clone();
                    (at, tlp, ty, tags)
                } else {
                    (at, tlp, ty, tags)
                };
                EngineCase {
                    revocation,
                    peer,
                    client,
                    items,
                    distribution,
                }
            },
        )
}

/// Policies compiled from typed specs (no configuration file), applied through the
/// engine's own paths on a real store: what `Federation.Pull` sends to a peer, what
/// `Admin.Explain` shows a client and decides for the peer, what `Query` pages to a
/// client (with page tokens that only that client can use), all against the oracle;
/// and a revocation is publishable exactly when it carries its item's marking, type
/// and tags.
#[test]
fn spec_built_policies_pull_explain_page_and_revoke_by_the_delivery_rule() {
    use entente::engine::{Engine, EngineError};
    use entente::policy::PageTokenError;
    use entente::store::ItemQuery;

    let pki = Pki::new();
    let node = pki.node(NODE);
    let material = pki.material(&node);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = no_regressions_file(128);
    let mut runner = TestRunner::new_with_rng(
        config.clone(),
        proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm),
    );
    let reached = AtomicUsize::new(0);
    let result = runner.run(&engine_case(), |case| {
        let spec = entente::policy::PolicySpec::new(node.clone())
            .with(case.peer.partner(PEER), case.peer.settings())
            .with(case.client.partner(CLIENT), case.client.settings());
        let policy = Policy::compile(&spec);
        let dir = tempfile::tempdir().unwrap();
        let store = entente::store::SledStore::open(dir.path(), &node, 8 << 20).unwrap();
        let signer = entente::crypto::BundleSigner::new(
            node.clone(),
            material.private_key_pkcs8().unwrap(),
            material.certificate_der(),
        )
        .unwrap();
        let engine = Arc::new(
            Engine::new(
                Arc::new(store),
                policy,
                signer,
                material.certificate_der(),
                Box::new(material.signer_trust().unwrap()),
            )
            .unwrap(),
        );
        let now = now_ms();
        let items: Vec<Item> = case
            .items
            .iter()
            .enumerate()
            .map(|(n, (tlp, ty, tags, validity))| {
                let (valid_from_ms, valid_until_ms) = validity.range(now);
                Item {
                    id: ItemId::new_random(),
                    modified_ms: now - 1000 + n as i64,
                    tlp: *tlp,
                    tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                    kind: ItemKind::Indicator(Indicator {
                        indicator_type: *ty,
                        value: sample_value(*ty, n),
                        description: String::new(),
                        confidence: 50,
                        kill_chain_phases: vec![],
                        valid_from_ms,
                        valid_until_ms,
                        properties: Default::default(),
                    }),
                }
            })
            .collect();
        let distribution = Distribution {
            max_hops: case.distribution.0,
            recipients: case.distribution.1.iter().map(|r| id(r)).collect(),
        };
        // Published by the node's own operator.
        let operator = entente::model::Partner {
            id: node.clone(),
            kind: entente::model::PartnerKind::Local,
            role: Role::Admin,
        };
        let bundle = engine.sign(&operator, &items, &distribution, now).unwrap();
        engine.store_own(&bundle, now).unwrap();

        let situation = |expired: bool, include_expired: bool| Situation {
            origin_here: true,
            hops: 0,
            distribution: Some((
                case.distribution.0,
                case.distribution
                    .1
                    .iter()
                    .map(|r| (*r).to_owned())
                    .collect(),
            )),
            // A settled embargo: none, or a day that has not passed.
            elapsed_ms: 0,
            latest: true,
            include_expired,
            expired,
        };
        let oracle = |partner: &str, spec: &PolicySpec, n: usize, include_expired: bool| {
            let (tlp, ty, _, validity) = &case.items[n];
            delivery_rule(
                Some(spec),
                partner,
                *tlp,
                *ty,
                &items[n].tags,
                &situation(validity.is_expired(), include_expired),
            )
        };

        // Pull: exactly the items the rule allows the peer, each once.
        let peer = case.peer.partner(PEER);
        let page = engine
            .pull_page(&peer, 0, 100)
            .map_err(|e| TestCaseError::fail(format!("pull: {e}")))?;
        let mut pulled = BTreeSet::new();
        for b in &page.bundles {
            for d in &b.bundle.disclosures {
                prop_assert!(pulled.insert(d.index as usize), "disclosed twice");
            }
        }
        let expected: BTreeSet<usize> = (0..items.len())
            .filter(|n| oracle(PEER, &case.peer, *n, false))
            .collect();
        prop_assert_eq!(&pulled, &expected, "pull to the peer");
        reached.fetch_add(expected.len(), Ordering::Relaxed);

        // Explain, asked by the client about the peer: shown only if the client may see
        // the item itself, and then with the peer's decision.
        let client = case.client.partner(CLIENT);
        for (n, item) in items.iter().enumerate() {
            let answer = runtime
                .block_on(engine.explain(&client, &id(PEER), &item.id))
                .map_err(|e| TestCaseError::fail(format!("explain: {e}")))?;
            prop_assert_eq!(
                answer.is_some(),
                oracle(CLIENT, &case.client, n, true),
                "explain shown to the client, item {}",
                n
            );
            if let Some((_, decision)) = answer {
                prop_assert_eq!(
                    decision.allowed(),
                    oracle(PEER, &case.peer, n, false),
                    "explain's decision for the peer, item {}: {}",
                    n,
                    decision.rule
                );
            }
        }

        // Query, one item per page: every item the client may see, once; tokens of
        // one length that no other caller can use.
        let query = ItemQuery::default();
        let mut seen = BTreeSet::new();
        let mut token = Vec::new();
        let mut lengths = BTreeSet::new();
        loop {
            let page = engine
                .query_blocking(&client, "query", &query, &token, 1, now_ms())
                .map_err(|e| TestCaseError::fail(format!("query: {e}")))?
                .page;
            for stored in &page.items {
                prop_assert!(seen.insert(stored.index as usize));
            }
            let Some(next) = page.next else { break };
            lengths.insert(next.len());
            let stranger = entente::model::Partner {
                id: id(STRANGER),
                ..client.clone()
            };
            prop_assert!(matches!(
                engine.query_blocking(&stranger, "query", &query, &next, 1, now_ms()),
                Err(EngineError::PageToken(PageTokenError::Invalid))
            ));
            token = next;
        }
        prop_assert!(lengths.len() <= 1, "token lengths {:?}", lengths);
        let expected: BTreeSet<usize> = (0..items.len())
            .filter(|n| oracle(CLIENT, &case.client, *n, false))
            .collect();
        prop_assert_eq!(&seen, &expected, "query by the client");

        // A revocation is publishable exactly when it carries its item's marking, type
        // and tags (tag order does not matter), and is about the same types: one without
        // the pattern of a STIX pattern item is about `stix-pattern` alone.
        let (at, tlp, ty, tags) = &case.revocation;
        let mut revocation_tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        revocation_tags.reverse();
        let revocation = Item {
            id: items[*at].id.clone(),
            modified_ms: now,
            tlp: *tlp,
            tags: revocation_tags,
            kind: ItemKind::Revocation(Revocation {
                indicator_type: *ty,
                reason: "withdrawn".into(),
                indicator: None,
            }),
        };
        let same_tags = {
            let mut a: Vec<&str> = tags.clone();
            let mut b: Vec<&str> = case.items[*at].2.clone();
            a.sort_unstable();
            b.sort_unstable();
            a == b
        };
        let about = |item: &Item| {
            let mut types = item.policy_types();
            types.sort();
            types.dedup();
            types
        };
        let same_about = about(&revocation) == about(&items[*at]);
        let matches =
            *tlp == case.items[*at].0 && *ty == case.items[*at].1 && same_tags && same_about;
        prop_assert_eq!(
            engine
                .check_publishable(&operator, &[revocation], &Distribution::default(), now)
                .is_ok(),
            matches,
            "revocation {:?} of item {:?}",
            case.revocation,
            case.items[*at]
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        reached.load(Ordering::Relaxed) > 0,
        "no case let an item through to the peer"
    );
}

/// A value valid for its type, distinct per position.
fn sample_value(ty: IndicatorType, n: usize) -> String {
    match ty {
        IndicatorType::Ipv4 => format!("198.51.100.{n}"),
        IndicatorType::Ipv6 => format!("2001:db8::{n:x}"),
        IndicatorType::Cidr => format!("198.51.{n}.0/24"),
        IndicatorType::Domain => format!("host-{n}.example.com"),
        IndicatorType::Url => format!("https://host-{n}.example.com/path"),
        IndicatorType::Email => format!("user{n}@example.com"),
        IndicatorType::Md5 => format!("{n:032x}"),
        IndicatorType::Sha1 => format!("{n:040x}"),
        IndicatorType::Sha256 => format!("{n:064x}"),
        IndicatorType::StixPattern => format!("[domain-name:value = 'host-{n}.example.com']"),
        context => panic!("{context} is not an indicator type"),
    }
}
