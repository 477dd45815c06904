//! The Intel service end to end: an in-process node on port 0, real mutual TLS with a
//! PKI generated at test time, and `NodeClient` calls as analysts, read-only clients and
//! peer nodes make them. Publish, Query (filters and paging), Get with provenance,
//! Subscribe, the interim sharing policy and the single-writer versioning rule.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use common::{Pki, client, peer, start, write_config};
use entente::client::{ClientError, NodeClient};
use entente::engine::now_ms;
use entente::model::ItemId;
use entente::rpc::proto::intel_client::IntelClient;
use entente::rpc::proto::{GetRequest, ItemFilter, PublishRequest, PublishResponse, StoredItem};
use entente::wire::{self, Tlp};
use entente::{Node, NodeId};

/// Upper bound for any single call or wait.
const DEADLINE: Duration = Duration::from_secs(30);

const HQ: &str = "redmond.hq";
const ANALYST: &str = "analyst.alice";
const READER: &str = "researcher.bob";
const PEER: &str = "berlin.office";

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// A node `redmond.hq` with an analyst, a read-only client and a peer configured.
struct Hq {
    node: Node,
    id: NodeId,
    pki: Pki,
}

impl Hq {
    async fn start() -> Self {
        let pki = Pki::new();
        let id = pki.node(HQ);
        pki.client(ANALYST);
        pki.client(READER);
        pki.node(PEER);
        let config = write_config(
            &pki,
            &id,
            &[
                client(ANALYST, "analyst"),
                client(READER, "read_only"),
                peer(PEER, "127.0.0.1:1"),
            ],
            &[],
        );
        let node = start(&config).await;
        Self { node, id, pki }
    }

    /// A connection to the node as `who` (an identity issued by the test PKI).
    async fn connect(&self, who: &str) -> NodeClient {
        let who = NodeId::new(who).unwrap();
        let material = self.pki.material(&who);
        let tls = material.client_config().expect("client TLS config");
        within(
            "connect",
            NodeClient::connect(tls, &who, &self.node.local_addr().to_string(), &self.id),
        )
        .await
        .unwrap_or_else(|e| panic!("{who} cannot connect: {e}"))
    }

    async fn stop(self) {
        self.node.shutdown(DEADLINE).await.expect("clean shutdown");
    }
}

/// Awaits `future`, failing the test if it takes longer than [`DEADLINE`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {DEADLINE:?}"))
}

fn new_id() -> String {
    ItemId::new_random().to_string()
}

/// An indicator draft with an explicit id; version and validity are left to the node.
fn indicator(ty: &str, value: &str, tlp: Tlp, tags: &[&str]) -> wire::Item {
    wire::Item {
        id: new_id(),
        modified_unix_ms: 0,
        tlp: tlp as i32,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: ty.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        })),
    }
}

fn modified(mut item: wire::Item, ms: i64) -> wire::Item {
    item.modified_unix_ms = ms;
    item
}

fn indicator_of(item: &wire::Item) -> &wire::Indicator {
    match &item.kind {
        Some(wire::item::Kind::Indicator(i)) => i,
        other => panic!("expected an indicator, got {other:?}"),
    }
}

fn item_of(stored: &StoredItem) -> &wire::Item {
    stored.item.as_ref().expect("stored item has content")
}

fn provenance_of(stored: &StoredItem) -> &wire::Provenance {
    stored
        .provenance
        .as_ref()
        .expect("stored item has provenance")
}

fn id_of(stored: &StoredItem) -> String {
    item_of(stored).id.clone()
}

fn value_of(stored: &StoredItem) -> String {
    indicator_of(item_of(stored)).value.clone()
}

fn ids(items: &[StoredItem]) -> BTreeSet<String> {
    items.iter().map(id_of).collect()
}

fn set<'a>(ids: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    ids.into_iter().cloned().collect()
}

/// Publishes one bundle per element of `messages`, in one Publish stream.
async fn publish(
    client: &NodeClient,
    messages: Vec<Vec<wire::Item>>,
) -> Result<PublishResponse, ClientError> {
    let requests: Vec<PublishRequest> = messages
        .into_iter()
        .map(|items| PublishRequest {
            items,
            distribution: None,
            groups: Vec::new(),
        })
        .collect();
    within("publish", client.publish(tokio_stream::iter(requests))).await
}

/// Every item matching `filter`, following `next_page_token` to the end.
async fn query_all(client: &NodeClient, filter: &ItemFilter) -> Vec<StoredItem> {
    let mut items = Vec::new();
    let mut token = Vec::new();
    for _ in 0..1000 {
        let page = within("query", client.query(filter.clone(), 1000, token))
            .await
            .unwrap_or_else(|e| panic!("query {filter:?} failed: {e}"));
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            return items;
        }
        token = page.next_page_token;
    }
    panic!("query {filter:?} did not end after 1000 pages");
}

async fn query_ids(client: &NodeClient, filter: ItemFilter) -> BTreeSet<String> {
    ids(&query_all(client, &filter).await)
}

fn by_value(value: &str) -> ItemFilter {
    ItemFilter {
        value: value.to_owned(),
        ..Default::default()
    }
}

fn everything() -> ItemFilter {
    ItemFilter {
        include_expired: true,
        ..Default::default()
    }
}

async fn get(client: &NodeClient, id: &str) -> Option<StoredItem> {
    within("get", client.get(id))
        .await
        .unwrap_or_else(|e| panic!("get {id} failed: {e}"))
}

/// The code and message of a failed call.
fn status(error: ClientError) -> (tonic::Code, String) {
    match error {
        ClientError::Status { code, message, .. } => (code, message),
        other => panic!("expected an answer from the node, got {other}"),
    }
}

/// A mix of markings, types, tags and validity, published by the analyst as two
/// bundles: the first with versions a day old (one of them expired), the second
/// with versions the node assigns now.
struct Mix {
    /// Item ids by name.
    ids: BTreeMap<&'static str, String>,
    /// Bundle ids Publish returned, in order.
    bundles: Vec<String>,
    /// The node's clock before publishing.
    t0: i64,
}

impl Mix {
    fn id(&self, name: &str) -> &String {
        &self.ids[name]
    }

    fn ids(&self, names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| self.id(n).clone()).collect()
    }

    async fn publish(analyst: &NodeClient) -> Self {
        let t0 = now_ms();
        let old = t0 - DAY_MS;
        let mut expired = indicator("domain", "old.example.net", Tlp::Green, &["campaign-x"]);
        expired.modified_unix_ms = old;
        if let Some(wire::item::Kind::Indicator(i)) = &mut expired.kind {
            i.valid_from_unix_ms = t0 - 2 * HOUR_MS;
            i.valid_until_unix_ms = Some(t0 - HOUR_MS);
        }
        let first: Vec<(&'static str, wire::Item)> = vec![
            (
                "clear_domain",
                // Not normalised: the node stores evil.example.com.
                modified(
                    indicator("domain", "EVIL.Example.COM", Tlp::Clear, &["campaign-x"]),
                    old,
                ),
            ),
            (
                "green_ipv4",
                modified(
                    indicator(
                        "ipv4",
                        "198.51.100.23",
                        Tlp::Green,
                        &["campaign-x", "source:honeypot"],
                    ),
                    old,
                ),
            ),
            (
                "amber_url",
                modified(
                    indicator(
                        "url",
                        "http://bad.example.org/payload",
                        Tlp::Amber,
                        &["campaign-y"],
                    ),
                    old,
                ),
            ),
            (
                "amber_strict_sha256",
                modified(
                    indicator(
                        "sha256",
                        "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                        Tlp::AmberStrict,
                        &[],
                    ),
                    old,
                ),
            ),
            (
                "red_md5",
                modified(
                    indicator(
                        "md5",
                        "d41d8cd98f00b204e9800998ecf8427e",
                        Tlp::Red,
                        &["campaign-x"],
                    ),
                    old,
                ),
            ),
            ("expired_green_domain", expired),
        ];
        let second: Vec<(&'static str, wire::Item)> = vec![
            (
                "recent_green_ipv6",
                indicator("ipv6", "2001:DB8:0:0::7", Tlp::Green, &["campaign-y"]),
            ),
            (
                "recent_red_cidr",
                indicator("cidr", "203.0.113.0/24", Tlp::Red, &["campaign-y"]),
            ),
        ];
        let mut ids = BTreeMap::new();
        for (name, item) in first.iter().chain(second.iter()) {
            ids.insert(*name, item.id.clone());
        }
        let response = publish(
            analyst,
            vec![
                first.into_iter().map(|(_, i)| i).collect(),
                second.into_iter().map(|(_, i)| i).collect(),
            ],
        )
        .await
        .expect("analyst publishes the mix");
        assert_eq!(response.bundle_ids.len(), 2, "{response:?}");
        assert_eq!(response.items_accepted, 8, "{response:?}");
        assert_eq!(response.items_duplicate, 0, "{response:?}");
        assert_eq!(response.items_rejected, 0, "{response:?}");
        Self {
            ids,
            bundles: response.bundle_ids,
            t0,
        }
    }
}

const ALL_CURRENT: [&str; 7] = [
    "clear_domain",
    "green_ipv4",
    "amber_url",
    "amber_strict_sha256",
    "red_md5",
    "recent_green_ipv6",
    "recent_red_cidr",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyst_publishes_then_queries_and_gets_with_provenance() {
    let hq = Hq::start().await;
    let analyst = hq.connect(ANALYST).await;
    let mix = Mix::publish(&analyst).await;

    // Everything current; the expired indicator only on request.
    assert_eq!(
        query_ids(&analyst, ItemFilter::default()).await,
        mix.ids(&ALL_CURRENT)
    );
    let mut all = mix.ids(&ALL_CURRENT);
    all.insert(mix.id("expired_green_domain").clone());
    assert_eq!(query_ids(&analyst, everything()).await, all);

    // Exact value, normalised before lookup, with and without a type.
    for value in [
        "evil.example.com",
        "EVIL.Example.COM",
        "Evil.Example.Com.",
        " evil.example.com ",
    ] {
        assert_eq!(
            query_ids(&analyst, by_value(value)).await,
            mix.ids(&["clear_domain"]),
            "value {value:?}"
        );
        let typed = ItemFilter {
            indicator_type: "domain".into(),
            ..by_value(value)
        };
        assert_eq!(
            query_ids(&analyst, typed).await,
            mix.ids(&["clear_domain"]),
            "domain {value:?}"
        );
    }
    let found = query_all(&analyst, &by_value("EVIL.EXAMPLE.COM")).await;
    assert_eq!(value_of(&found[0]), "evil.example.com");
    assert_eq!(
        query_ids(&analyst, by_value("2001:db8::7")).await,
        mix.ids(&["recent_green_ipv6"])
    );
    assert_eq!(
        query_ids(&analyst, by_value("2001:0DB8:0000::0007")).await,
        mix.ids(&["recent_green_ipv6"])
    );
    assert_eq!(
        query_ids(
            &analyst,
            by_value("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        )
        .await,
        mix.ids(&["amber_strict_sha256"])
    );
    // The right value with the wrong type, and a value nobody published.
    let wrong_type = ItemFilter {
        indicator_type: "url".into(),
        ..by_value("evil.example.com")
    };
    assert_eq!(query_ids(&analyst, wrong_type).await, BTreeSet::new());
    assert_eq!(
        query_ids(&analyst, by_value("nobody.example.com")).await,
        BTreeSet::new()
    );
    // The expired indicator by value: hidden unless asked for.
    assert_eq!(
        query_ids(&analyst, by_value("old.example.net")).await,
        BTreeSet::new()
    );
    assert_eq!(
        query_ids(
            &analyst,
            ItemFilter {
                include_expired: true,
                ..by_value("old.example.net")
            }
        )
        .await,
        mix.ids(&["expired_green_domain"])
    );

    // By type.
    let of_type = |ty: &str, include_expired| ItemFilter {
        indicator_type: ty.to_owned(),
        include_expired,
        ..Default::default()
    };
    assert_eq!(
        query_ids(&analyst, of_type("domain", false)).await,
        mix.ids(&["clear_domain"])
    );
    assert_eq!(
        query_ids(&analyst, of_type("domain", true)).await,
        mix.ids(&["clear_domain", "expired_green_domain"])
    );
    assert_eq!(
        query_ids(&analyst, of_type("md5", false)).await,
        mix.ids(&["red_md5"])
    );
    assert_eq!(
        query_ids(&analyst, of_type("email", false)).await,
        BTreeSet::new()
    );

    // By tag.
    let tagged = |tag: &str, include_expired| ItemFilter {
        tag: tag.to_owned(),
        include_expired,
        ..Default::default()
    };
    assert_eq!(
        query_ids(&analyst, tagged("campaign-x", false)).await,
        mix.ids(&["clear_domain", "green_ipv4", "red_md5"])
    );
    assert_eq!(
        query_ids(&analyst, tagged("campaign-x", true)).await,
        mix.ids(&[
            "clear_domain",
            "green_ipv4",
            "red_md5",
            "expired_green_domain"
        ])
    );
    assert_eq!(
        query_ids(&analyst, tagged("campaign-y", false)).await,
        mix.ids(&["amber_url", "recent_green_ipv6", "recent_red_cidr"])
    );
    assert_eq!(
        query_ids(&analyst, tagged("source:honeypot", false)).await,
        mix.ids(&["green_ipv4"])
    );
    assert_eq!(
        query_ids(&analyst, tagged("campaign", false)).await,
        BTreeSet::new()
    );
    // Filters combine.
    assert_eq!(
        query_ids(
            &analyst,
            ItemFilter {
                indicator_type: "ipv4".into(),
                ..tagged("campaign-x", false)
            }
        )
        .await,
        mix.ids(&["green_ipv4"])
    );

    // By origin.
    let from = |origin: &str| ItemFilter {
        origin: origin.to_owned(),
        ..Default::default()
    };
    assert_eq!(query_ids(&analyst, from(HQ)).await, mix.ids(&ALL_CURRENT));
    assert_eq!(query_ids(&analyst, from(PEER)).await, BTreeSet::new());

    // By modification time: only the second bundle's items are recent.
    let since = |ms: i64| ItemFilter {
        modified_since_unix_ms: ms,
        include_expired: true,
        ..Default::default()
    };
    assert_eq!(
        query_ids(&analyst, since(mix.t0 - 60_000)).await,
        mix.ids(&["recent_green_ipv6", "recent_red_cidr"])
    );
    assert_eq!(query_ids(&analyst, since(mix.t0 - 2 * DAY_MS)).await, all);
    assert_eq!(
        query_ids(&analyst, since(now_ms() + DAY_MS)).await,
        BTreeSet::new()
    );

    // Get: the item as published (normalised) with its provenance.
    let stored = get(&analyst, mix.id("clear_domain"))
        .await
        .expect("clear_domain is there");
    let item = item_of(&stored);
    assert_eq!(&item.id, mix.id("clear_domain"));
    assert_eq!(item.tlp, Tlp::Clear as i32);
    assert_eq!(item.tags, ["campaign-x"]);
    assert_eq!(item.modified_unix_ms, mix.t0 - DAY_MS);
    let i = indicator_of(item);
    assert_eq!(i.indicator_type, "domain");
    assert_eq!(i.value, "evil.example.com");
    assert_eq!(i.valid_from_unix_ms, mix.t0 - DAY_MS);
    assert_eq!(i.valid_until_unix_ms, None);

    let stored = get(&analyst, mix.id("recent_green_ipv6"))
        .await
        .expect("recent_green_ipv6 is there");
    assert_eq!(value_of(&stored), "2001:db8::7");
    let item = item_of(&stored);
    assert!(
        item.modified_unix_ms >= mix.t0 && item.modified_unix_ms <= now_ms(),
        "the node assigns the version: {}",
        item.modified_unix_ms
    );

    // Provenance of every item: this node, the bundle Publish named, no hops, verified.
    for (name, id) in &mix.ids {
        let stored = get(&analyst, id)
            .await
            .unwrap_or_else(|| panic!("{name} ({id}) is missing"));
        assert_eq!(&id_of(&stored), id);
        let provenance = provenance_of(&stored);
        let bundle = if name.starts_with("recent_") {
            &mix.bundles[1]
        } else {
            &mix.bundles[0]
        };
        assert_eq!(
            provenance,
            &wire::Provenance {
                origin: HQ.into(),
                bundle_id: bundle.clone(),
                received_from: HQ.into(),
                hops: 0,
                signature_verified: true,
            },
            "{name}"
        );
    }
    // Query answers carry the same provenance.
    for stored in query_all(&analyst, &everything()).await {
        let provenance = provenance_of(&stored);
        assert_eq!(provenance.origin, HQ);
        assert!(mix.bundles.contains(&provenance.bundle_id));
        assert!(provenance.signature_verified);
    }

    // Ids are case-insensitive.
    let upper = get(&analyst, &mix.id("green_ipv4").to_uppercase())
        .await
        .expect("found by the upper-case id");
    assert_eq!(&id_of(&upper), mix.id("green_ipv4"));

    // Absent ids answer NOT_FOUND (None); malformed ids are invalid arguments.
    assert!(get(&analyst, &new_id()).await.is_none());
    let err = within("get", analyst.get("indicator--not-a-uuid"))
        .await
        .expect_err("malformed id");
    assert_eq!(status(err).0, tonic::Code::InvalidArgument);

    hq.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_client_sees_up_to_green_and_cannot_publish() {
    let hq = Hq::start().await;
    let analyst = hq.connect(ANALYST).await;
    let reader = hq.connect(READER).await;
    let mix = Mix::publish(&analyst).await;

    let visible = ["clear_domain", "green_ipv4", "recent_green_ipv6"];
    assert_eq!(
        query_ids(&reader, ItemFilter::default()).await,
        mix.ids(&visible)
    );
    let mut visible_all = mix.ids(&visible);
    visible_all.insert(mix.id("expired_green_domain").clone());
    assert_eq!(query_ids(&reader, everything()).await, visible_all);
    assert_eq!(
        query_ids(
            &reader,
            ItemFilter {
                tag: "campaign-x".into(),
                ..Default::default()
            }
        )
        .await,
        mix.ids(&["clear_domain", "green_ipv4"])
    );
    assert_eq!(
        query_ids(
            &reader,
            ItemFilter {
                tag: "campaign-y".into(),
                ..Default::default()
            }
        )
        .await,
        mix.ids(&["recent_green_ipv6"])
    );
    // Withheld items are not found by value or type either.
    for value in [
        "http://bad.example.org/payload",
        "d41d8cd98f00b204e9800998ecf8427e",
        "203.0.113.0/24",
    ] {
        assert_eq!(
            query_ids(&reader, by_value(value)).await,
            BTreeSet::new(),
            "{value}"
        );
    }
    for ty in ["url", "md5", "sha256", "cidr"] {
        let filter = ItemFilter {
            indicator_type: ty.into(),
            include_expired: true,
            ..Default::default()
        };
        assert_eq!(query_ids(&reader, filter).await, BTreeSet::new(), "{ty}");
    }

    // Get: CLEAR and GREEN items with provenance; anything above is absent.
    for name in visible {
        let stored = get(&reader, mix.id(name))
            .await
            .unwrap_or_else(|| panic!("{name} is visible to the reader"));
        assert_eq!(&id_of(&stored), mix.id(name));
        assert!(provenance_of(&stored).signature_verified);
    }
    for name in [
        "amber_url",
        "amber_strict_sha256",
        "red_md5",
        "recent_red_cidr",
    ] {
        assert!(
            get(&reader, mix.id(name)).await.is_none(),
            "{name} must be withheld"
        );
        assert!(
            get(&analyst, mix.id(name)).await.is_some(),
            "{name} is there for the analyst"
        );
    }
    // A withheld id answers exactly like an id that does not exist.
    let withheld = raw_get(&reader, mix.id("amber_url")).await;
    let absent = raw_get(&reader, &new_id()).await;
    assert_eq!(withheld.0, tonic::Code::NotFound);
    assert_eq!(withheld, absent);

    // Publishing is refused and writes nothing.
    let before = query_ids(&analyst, everything()).await;
    let attempt = indicator("domain", "reader-wrote-this.example", Tlp::Green, &[]);
    let attempt_id = attempt.id.clone();
    let err = publish(&reader, vec![vec![attempt]])
        .await
        .expect_err("a read_only client may not publish");
    let (code, message) = status(err);
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    assert_eq!(query_ids(&analyst, everything()).await, before);
    assert_eq!(
        query_ids(
            &analyst,
            ItemFilter {
                include_expired: true,
                ..by_value("reader-wrote-this.example")
            }
        )
        .await,
        BTreeSet::new()
    );
    assert!(get(&analyst, &attempt_id).await.is_none());

    // A peer node may not use the client service at all.
    let peer_node = hq.connect(PEER).await;
    let err = within(
        "query",
        peer_node.query(ItemFilter::default(), 100, Vec::new()),
    )
    .await
    .expect_err("a peer node may not query");
    assert_eq!(status(err).0, tonic::Code::PermissionDenied);
    let err = within("get", peer_node.get(mix.id("clear_domain")))
        .await
        .expect_err("a peer node may not get");
    assert_eq!(status(err).0, tonic::Code::PermissionDenied);
    let err = publish(
        &peer_node,
        vec![vec![indicator("domain", "peer.example", Tlp::Clear, &[])]],
    )
    .await
    .expect_err("a peer node may not publish");
    assert_eq!(status(err).0, tonic::Code::PermissionDenied);
    assert_eq!(query_ids(&analyst, everything()).await, before);

    hq.stop().await;
}

/// The status code and message of a Get that is expected to fail.
async fn raw_get(client: &NodeClient, id: &str) -> (tonic::Code, String) {
    let mut raw = IntelClient::new(client.channel());
    let status = within("get", raw.get(GetRequest { id: id.to_owned() }))
        .await
        .expect_err("get should fail");
    (status.code(), status.message().to_owned())
}

/// The next item of a subscription, failing on error, end of stream or timeout.
async fn next_item(who: &str, stream: &mut tonic::Streaming<StoredItem>) -> StoredItem {
    match tokio::time::timeout(DEADLINE, stream.message()).await {
        Ok(Ok(Some(item))) => item,
        Ok(Ok(None)) => panic!("{who}'s subscription ended"),
        Ok(Err(status)) => panic!("{who}'s subscription failed: {status}"),
        Err(_) => panic!("{who} received nothing within {DEADLINE:?}"),
    }
}

/// Items of a subscription up to and including the one with id `last`.
async fn until(
    who: &str,
    stream: &mut tonic::Streaming<StoredItem>,
    last: &str,
) -> Vec<StoredItem> {
    let mut items = Vec::new();
    loop {
        let item = next_item(who, stream).await;
        let done = id_of(&item) == last;
        items.push(item);
        if done {
            return items;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_receive_what_policy_and_filter_allow() {
    let hq = Hq::start().await;
    let analyst = hq.connect(ANALYST).await;
    let reader = hq.connect(READER).await;
    let watcher = hq.connect(ANALYST).await;

    let mut reader_stream = within(
        "subscribe",
        reader.subscribe(ItemFilter {
            tag: "watch".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("reader subscribes");
    let mut analyst_stream = within("subscribe", watcher.subscribe(ItemFilter::default()))
        .await
        .expect("analyst subscribes");

    // A marker both may see: once it arrives, both subscriptions are live.
    let marker = indicator("domain", "marker.example", Tlp::Green, &["watch"]);
    let marker_id = marker.id.clone();
    publish(&analyst, vec![vec![marker]]).await.unwrap();
    for (who, stream) in [
        ("reader", &mut reader_stream),
        ("analyst", &mut analyst_stream),
    ] {
        let first = next_item(who, stream).await;
        assert_eq!(id_of(&first), marker_id, "{who}'s first item");
    }

    let green_1 = indicator("ipv4", "192.0.2.1", Tlp::Green, &["watch"]);
    let green_2 = indicator("domain", "green.example", Tlp::Green, &["watch", "x"]);
    let red_1 = indicator("ipv4", "192.0.2.2", Tlp::Red, &["watch"]);
    let red_2 = indicator("domain", "red.example", Tlp::Red, &["watch"]);
    let amber = indicator("ipv4", "192.0.2.3", Tlp::Amber, &["watch"]);
    let untagged_green = indicator("ipv4", "192.0.2.4", Tlp::Green, &[]);
    let batch = vec![green_1, red_1, amber, green_2, untagged_green, red_2];
    let batch_ids: Vec<String> = batch.iter().map(|i| i.id.clone()).collect();
    let response = publish(&analyst, vec![batch]).await.unwrap();
    assert_eq!(response.items_accepted, 6);
    // A final item, published after the batch, that both may see: when it arrives,
    // everything before it has been delivered or withheld.
    let end = indicator("domain", "end.example", Tlp::Clear, &["watch"]);
    let end_id = end.id.clone();
    publish(&analyst, vec![vec![end]]).await.unwrap();

    let reader_items = until("reader", &mut reader_stream, &end_id).await;
    let analyst_items = until("analyst", &mut analyst_stream, &end_id).await;
    let reader_ids: Vec<String> = reader_items.iter().map(id_of).collect();
    let analyst_ids: Vec<String> = analyst_items.iter().map(id_of).collect();

    // The reader: the GREEN items tagged `watch`, and the end marker, each once.
    let expected_reader = set([&batch_ids[0], &batch_ids[3], &end_id]);
    assert_eq!(set(&reader_ids), expected_reader);
    assert_eq!(reader_ids.len(), expected_reader.len(), "{reader_ids:?}");
    for stored in &reader_items {
        let tlp = item_of(stored).tlp;
        assert!(
            tlp == Tlp::Green as i32 || tlp == Tlp::Clear as i32,
            "reader received {stored:?}"
        );
        assert!(item_of(stored).tags.iter().any(|t| t == "watch"));
    }
    // The analyst: all of them, each once.
    let mut expected_analyst = set(&batch_ids);
    expected_analyst.insert(end_id.clone());
    assert_eq!(set(&analyst_ids), expected_analyst);
    assert_eq!(analyst_ids.len(), expected_analyst.len(), "{analyst_ids:?}");
    // Subscribed items carry the content and provenance of the stored ones.
    for stored in &analyst_items {
        let provenance = provenance_of(stored);
        assert_eq!(provenance.origin, HQ);
        assert_eq!(provenance.received_from, HQ);
        assert_eq!(provenance.hops, 0);
        assert!(provenance.signature_verified);
        let held = get(&analyst, &id_of(stored)).await.expect("stored");
        assert_eq!(item_of(&held), item_of(stored));
    }

    hq.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_returns_every_item_once_and_survives_bad_tokens() {
    const COUNT: usize = 2_500;
    let hq = Hq::start().await;
    let analyst = hq.connect(ANALYST).await;
    let items: Vec<wire::Item> = (0..COUNT)
        .map(|i| {
            indicator(
                "ipv4",
                &format!("10.{}.{}.{}", i / 65_536, (i / 256) % 256, i % 256),
                Tlp::Green,
                &["bulk"],
            )
        })
        .collect();
    let expected: BTreeSet<String> = items.iter().map(|i| i.id.clone()).collect();
    assert_eq!(expected.len(), COUNT);
    let messages: Vec<Vec<wire::Item>> = items.chunks(1000).map(<[_]>::to_vec).collect();
    let response = publish(&analyst, messages).await.unwrap();
    assert_eq!(response.bundle_ids.len(), 3);
    assert_eq!(response.items_accepted, COUNT as u64);

    // Both query paths: a scan of all items (tag) and the value index (type).
    for filter in [
        ItemFilter {
            tag: "bulk".into(),
            ..Default::default()
        },
        ItemFilter {
            indicator_type: "ipv4".into(),
            ..Default::default()
        },
        ItemFilter::default(),
    ] {
        let mut seen = Vec::new();
        let mut token = Vec::new();
        let mut pages = 0;
        loop {
            pages += 1;
            assert!(pages <= 10, "{filter:?}: too many pages");
            let page = within("query", analyst.query(filter.clone(), 1000, token))
                .await
                .unwrap();
            assert!(
                page.items.len() <= 1000,
                "{filter:?}: page of {}",
                page.items.len()
            );
            seen.extend(page.items.iter().map(id_of));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert!(pages >= 3, "{filter:?}: {pages} pages for {COUNT} items");
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "{filter:?}: an item came twice");
        assert_eq!(unique, expected, "{filter:?}");
    }

    // Pages are capped at 1000, whatever the caller asks for.
    let page = within(
        "query",
        analyst.query(ItemFilter::default(), 5000, Vec::new()),
    )
    .await
    .unwrap();
    assert!(!page.items.is_empty() && page.items.len() <= 1000);
    assert!(!page.next_page_token.is_empty());

    // Garbage and over-long tokens: a clean refusal or a valid page, never a crash.
    let mut long = b"I".to_vec();
    long.extend(std::iter::repeat_n(0xa5, 4999));
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("text", b"garbage-token".to_vec()),
        ("high bytes", vec![0xff; 64]),
        ("item prefix", b"I\x01\x02\x03".to_vec()),
        ("value prefix", b"V\x01\xff\x00".to_vec()),
        ("4096 bytes", vec![b'V'; 4096]),
        ("5000 bytes", long),
        ("5000 zeros", vec![0; 5000]),
    ];
    for (name, token) in garbage {
        for filter in [
            ItemFilter::default(),
            ItemFilter {
                indicator_type: "ipv4".into(),
                ..Default::default()
            },
        ] {
            match within("query", analyst.query(filter.clone(), 1000, token.clone())).await {
                Ok(page) => {
                    assert!(page.items.len() <= 1000, "{name}");
                    for stored in &page.items {
                        assert!(expected.contains(&id_of(stored)), "{name}: {stored:?}");
                    }
                }
                Err(err) => {
                    let (code, message) = status(err);
                    assert_eq!(
                        code,
                        tonic::Code::InvalidArgument,
                        "{name} token, {filter:?}: {message}"
                    );
                }
            }
        }
    }
    // The node is still serving.
    let found = query_ids(&analyst, by_value("10.0.9.195")).await;
    assert_eq!(found.len(), 1);
    assert!(expected.is_superset(&found));

    hq.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_publish_input_is_refused_and_nothing_is_written() {
    let hq = Hq::start().await;
    let analyst = hq.connect(ANALYST).await;

    // One bad item refuses its whole message, naming the item.
    let good = indicator("domain", "good.example", Tlp::Green, &[]);
    let bad = indicator("md5", "d41d8cd98f00b204e9800998ecf8427", Tlp::Green, &[]);
    let err = publish(&analyst, vec![vec![good.clone(), bad]])
        .await
        .expect_err("31 hex digits are no md5");
    let (code, message) = status(err);
    assert_eq!(code, tonic::Code::InvalidArgument, "{message}");
    assert!(message.contains("item 1"), "{message}");
    assert!(message.contains("md5"), "{message}");
    assert!(get(&analyst, &good.id).await.is_none());
    assert_eq!(
        query_ids(&analyst, by_value("good.example")).await,
        BTreeSet::new()
    );

    // A message without items.
    let err = publish(&analyst, vec![vec![]])
        .await
        .expect_err("an empty bundle");
    let (code, message) = status(err);
    assert_eq!(code, tonic::Code::InvalidArgument, "{message}");
    assert!(message.contains("message 0"), "{message}");

    // Other malformed items.
    let mut no_tlp = indicator("domain", "no-tlp.example", Tlp::Green, &[]);
    no_tlp.tlp = Tlp::Unspecified as i32;
    let mut bad_id = indicator("domain", "bad-id.example", Tlp::Green, &[]);
    bad_id.id = "bundle--0d7c6a3c-1f0e-4c53-8f39-2d2b1d2f5e11".into();
    let unknown_type = indicator("hostname-ish", "x.example", Tlp::Green, &[]);
    let bad_tag = indicator("domain", "bad-tag.example", Tlp::Green, &["two words"]);
    for (name, item) in [
        ("no TLP", no_tlp),
        ("bad id", bad_id),
        ("unknown type", unknown_type),
        ("bad tag", bad_tag),
    ] {
        let err = publish(&analyst, vec![vec![item]]).await.expect_err(name);
        let (code, message) = status(err);
        assert_eq!(code, tonic::Code::InvalidArgument, "{name}: {message}");
        assert!(message.contains("item 0"), "{name}: {message}");
    }

    assert_eq!(query_ids(&analyst, everything()).await, BTreeSet::new());
    hq.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_versions_replace_older_ones_and_older_ones_are_duplicates() {
    let hq = Hq::start().await;
    let analyst = hq.connect(ANALYST).await;
    let now = now_ms();
    let id = new_id();
    let version = |value: &str, ms: i64| {
        let mut item = indicator("domain", value, Tlp::Amber, &["versioned"]);
        item.id = id.clone();
        item.modified_unix_ms = ms;
        item
    };

    let response = publish(
        &analyst,
        vec![vec![version("v1.example.com", now - 20_000)]],
    )
    .await
    .unwrap();
    assert_eq!(response.items_accepted, 1);
    let first_bundle = response.bundle_ids[0].clone();
    assert_eq!(
        value_of(&get(&analyst, &id).await.unwrap()),
        "v1.example.com"
    );

    // A newer version with another value replaces it, in the index too.
    let response = publish(
        &analyst,
        vec![vec![version("v2.example.com", now - 10_000)]],
    )
    .await
    .unwrap();
    assert_eq!(
        (
            response.items_accepted,
            response.items_duplicate,
            response.items_rejected
        ),
        (1, 0, 0)
    );
    let second_bundle = response.bundle_ids[0].clone();
    assert_ne!(first_bundle, second_bundle);
    let stored = get(&analyst, &id).await.unwrap();
    assert_eq!(value_of(&stored), "v2.example.com");
    assert_eq!(item_of(&stored).modified_unix_ms, now - 10_000);
    assert_eq!(provenance_of(&stored).bundle_id, second_bundle);
    assert_eq!(
        query_ids(&analyst, by_value("v1.example.com")).await,
        BTreeSet::new()
    );
    assert_eq!(
        query_ids(
            &analyst,
            ItemFilter {
                include_expired: true,
                ..by_value("v1.example.com")
            }
        )
        .await,
        BTreeSet::new()
    );
    assert_eq!(
        query_ids(&analyst, by_value("v2.example.com")).await,
        set([&id])
    );
    let tagged = query_all(
        &analyst,
        &ItemFilter {
            tag: "versioned".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(tagged.len(), 1, "one item, whatever its versions");
    assert_eq!(value_of(&tagged[0]), "v2.example.com");

    // An older version written here is refused, naming both times (a change its writer
    // meant is never passed over); the same version again is a duplicate. Neither
    // changes anything.
    let refused = publish(
        &analyst,
        vec![vec![version("v0.example.com", now - 30_000)]],
    )
    .await;
    let refused = format!("{refused:?}");
    assert!(
        refused.contains("a newer version of") && refused.contains("is held"),
        "{refused}"
    );
    let response = publish(
        &analyst,
        vec![vec![version("v2.example.com", now - 10_000)]],
    )
    .await
    .unwrap();
    assert_eq!(
        (
            response.items_accepted,
            response.items_duplicate,
            response.items_rejected
        ),
        (0, 1, 0)
    );
    let stored = get(&analyst, &id).await.unwrap();
    assert_eq!(value_of(&stored), "v2.example.com");
    assert_eq!(provenance_of(&stored).bundle_id, second_bundle);
    assert_eq!(
        query_ids(&analyst, by_value("v0.example.com")).await,
        BTreeSet::new()
    );

    // Two versions in one bundle: the newer wins, the older counts as a duplicate.
    let other = new_id();
    let mut older = indicator("ipv4", "192.0.2.10", Tlp::Green, &[]);
    older.id = other.clone();
    older.modified_unix_ms = now - 5_000;
    let mut newer = indicator("ipv4", "192.0.2.11", Tlp::Green, &[]);
    newer.id = other.clone();
    newer.modified_unix_ms = now - 1_000;
    let response = publish(&analyst, vec![vec![newer, older]]).await.unwrap();
    assert_eq!((response.items_accepted, response.items_duplicate), (1, 1));
    assert_eq!(
        value_of(&get(&analyst, &other).await.unwrap()),
        "192.0.2.11"
    );
    assert_eq!(
        query_ids(&analyst, by_value("192.0.2.10")).await,
        BTreeSet::new()
    );

    hq.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_reports_the_bundles_already_published() {
    let hq = Hq::start().await;
    let analyst = hq.connect(ANALYST).await;
    let good = indicator("domain", "first.example.com", Tlp::Green, &[]);
    let good_id = good.id.clone();
    let bad = indicator("md5", "abc", Tlp::Green, &[]);
    let requests = vec![
        PublishRequest {
            items: vec![good],
            distribution: None,
            groups: Vec::new(),
        },
        PublishRequest {
            items: vec![bad],
            distribution: None,
            groups: Vec::new(),
        },
    ];
    let err = within("publish", analyst.publish(tokio_stream::iter(requests)))
        .await
        .expect_err("the second message is invalid");
    let (code, message) = status(err);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(message.contains("message 1, item 0"), "{message}");
    // The first bundle is named, and it is there.
    let stored = get(&analyst, &good_id)
        .await
        .expect("the first bundle was published");
    let bundle_id = provenance_of(&stored).bundle_id.clone();
    assert!(
        message.contains(&bundle_id),
        "{bundle_id} not named in: {message}"
    );
    hq.stop().await;
}

/// Values found at the edges of the input rules, through `Publish` and `Query`: an
/// IPv4-mapped IPv6 address is the IPv4 address (stored and found as one), `mailto:` is
/// dropped, and networks that are too broad, URLs with user information and `xn--` labels
/// that do not decode are refused with the reason.
#[tokio::test]
async fn input_edges_at_publish_and_query() {
    let hq = Hq::start().await;
    let analyst = hq.connect(ANALYST).await;

    let mapped = indicator("ipv6", "::ffff:192.0.2.1", Tlp::Green, &[]);
    let mapped_id = mapped.id.clone();
    let mailto = indicator("email", "mailto:Phish@Evil.example", Tlp::Green, &[]);
    let mailto_id = mailto.id.clone();
    publish(&analyst, vec![vec![mapped, mailto]])
        .await
        .expect("publish");
    let stored = get(&analyst, &mapped_id).await.expect("stored");
    let i = indicator_of(item_of(&stored));
    assert_eq!(
        (i.indicator_type.as_str(), i.value.as_str()),
        ("ipv4", "192.0.2.1")
    );
    let stored = get(&analyst, &mailto_id).await.expect("stored");
    assert_eq!(value_of(&stored), "phish@evil.example");

    // Every spelling, with or without a type, finds the one item.
    let want = set([&mapped_id]);
    for (ty, value) in [
        ("", "192.0.2.1"),
        ("", "::ffff:192.0.2.1"),
        ("", "::FFFF:c000:201"),
        ("ipv4", "::ffff:192.0.2.1"),
        ("ipv6", "::ffff:192.0.2.1"),
        ("ipv4", "192.0.2.1"),
    ] {
        let filter = ItemFilter {
            indicator_type: ty.to_owned(),
            ..by_value(value)
        };
        assert_eq!(query_ids(&analyst, filter).await, want, "{ty} {value}");
    }
    assert_eq!(
        query_ids(&analyst, by_value("mailto:phish@evil.example")).await,
        set([&mailto_id])
    );

    for (ty, value, expect) in [
        ("cidr", "0.0.0.0/0", "too broad"),
        ("cidr", "::/0", "too broad"),
        ("cidr", "10.0.0.0/7", "at least /8"),
        ("url", "https://user:pass@host.example/", "user information"),
        ("domain", "xn--zz.example", "punycode"),
        ("url", "https://xn--zz.example/x", "punycode"),
        ("email", "mailto:a@b.example?subject=x", "header fields"),
    ] {
        let err = publish(&analyst, vec![vec![indicator(ty, value, Tlp::Green, &[])]])
            .await
            .expect_err(value);
        let (code, message) = status(err);
        assert_eq!(code, tonic::Code::InvalidArgument, "{value}: {message}");
        assert!(message.contains(expect), "{value}: {message}");
    }
    hq.stop().await;
}

/// A relationship published before its ends reaches a subscriber once both ends have
/// arrived, after them, and once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_receives_a_relationship_once_its_ends_arrive() {
    let hq = Hq::start().await;
    let analyst = hq.connect(ANALYST).await;
    let watcher = hq.connect(ANALYST).await;
    let mut stream = within("subscribe", watcher.subscribe(ItemFilter::default()))
        .await
        .expect("analyst subscribes");

    let x = indicator("domain", "x.example", Tlp::Green, &[]);
    let y = indicator("domain", "y.example", Tlp::Green, &[]);
    let related = wire::Item {
        id: format!("relationship--{}", uuid::Uuid::new_v4()),
        modified_unix_ms: 0,
        tlp: Tlp::Green as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Context(wire::ContextObject {
            object_type: "relationship".into(),
            refs: vec![x.id.clone(), y.id.clone()],
            stix_properties: r#"{"relationship_type":"indicates"}"#.into(),
        })),
    };
    let marker = indicator("domain", "marker.example", Tlp::Green, &[]);
    let end = indicator("domain", "end.example", Tlp::Green, &[]);
    let ids = [&x, &y, &related, &marker, &end].map(|i| i.id.clone());
    publish(&analyst, vec![vec![related, marker]])
        .await
        .unwrap();
    // The marker comes; the relationship waits for its ends.
    assert_eq!(id_of(&next_item("analyst", &mut stream).await), ids[3]);
    publish(&analyst, vec![vec![x]]).await.unwrap();
    publish(&analyst, vec![vec![y]]).await.unwrap();
    publish(&analyst, vec![vec![end]]).await.unwrap();
    let received: Vec<String> = until("analyst", &mut stream, &ids[4])
        .await
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(
        received,
        vec![
            ids[0].clone(),
            ids[1].clone(),
            ids[2].clone(),
            ids[4].clone()
        ]
    );
    hq.stop().await;
}
