//! The node configuration: TOML in, a validated [`Config`] out, before any socket is
//! bound. Every problem is reported with the field it concerns. Relative paths are
//! resolved against the directory of the configuration file.
//!
//! ```toml
//! [node]
//! id = "redmond.hq"                # this node's id; must be the first DNS SAN of `cert`
//! listen = "0.0.0.0:7443"          # address:port to serve on
//! data_dir = "data"                # the node's store
//! cert = "certs/redmond.hq.crt"    # node certificate chain (PEM, leaf first)
//! key = "certs/redmond.hq.key"     # its private key (PEM, mode 0600)
//! trust_anchors = ["certs/ca.crt"] # federation CA certificates
//! crls = ["certs/crl.pem"]         # optional revocation lists
//!
//! [store]
//! cache_mb = 32                    # sled page cache (default 32 MiB)
//! compact_every = "1d"             # online compaction of the bundle log ("0": never)
//! keep_expired = "30d"             # expired indicators kept this long before compaction drops them
//!
//! [ledger]                         # the disclosure ledger's files
//! segment_bytes = 8388608          # a segment is closed at this size (default 8 MiB)
//! retain_days = 400                # drop closed segments older than this (default: keep all)
//! retain_bytes = 10737418240       # drop the oldest closed segments beyond this (default: keep all)
//! archive_dir = "ledger-archive"   # move dropped segments here instead of deleting them
//!
//! [[peer]]
//! id = "berlin.office"
//! address = "berlin.example.org:7443"
//! role = "peer"                    # peer (default) or read_only
//! trust_anchor = "certs/ca.crt"    # the CA its certificate must chain to; required
//!                                  # when trust_anchors names more than one
//!
//! [[client]]
//! id = "researcher.uni-x"
//! role = "read_only"               # read_only, analyst or admin
//!
//! [admin]                          # optional: metrics and the read-only console
//! listen = "127.0.0.1:9464"        # plain HTTP, loopback addresses only
//!
//! [[feed]]                         # an external source published as this node's own
//! name = "circl-osint"             # items get the tag source:circl-osint
//! kind = "misp"                    # misp or taxii
//! url = "https://www.circl.lu/doc/misp/feed-osint/"
//! tlp = "green"                    # for objects that give no marking
//! interval = "15m"
//! ```

pub mod builder;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::{IndicatorType, NodeId, Role, Tlp};
use crate::transport::{Listing, Partner, PartnerKind, TlsError, TlsMaterial, TlsPaths};

/// Largest configuration file accepted.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped fields.
    #[error("config {path}: {message}")]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A field has an invalid value.
    #[error("config {path}: {field}: {problem}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The field, e.g. `peer[1].id`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    ledger: RawLedger,
    #[serde(default)]
    peer: Vec<RawPeer>,
    #[serde(default)]
    client: Vec<RawClient>,
    #[serde(default)]
    groups: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    feed: Vec<RawFeed>,
    taxii: Option<RawTaxii>,
    admin: Option<RawAdmin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    name: String,
    kind: String,
    url: String,
    #[serde(default)]
    tlp: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    max_response_bytes: Option<u64>,
    #[serde(default)]
    max_objects_per_poll: Option<u64>,
    #[serde(default)]
    max_events_per_poll: Option<u64>,
    #[serde(default)]
    page_size: Option<u64>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    password_env: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    allow_http: bool,
    #[serde(default)]
    proxy: Option<String>,
    #[serde(default)]
    share_with_peers: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTaxii {
    listen: String,
    #[serde(default)]
    max_body_bytes: Option<usize>,
    #[serde(default)]
    basic: Vec<RawBasic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasic {
    client: String,
    password_hash: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    publish_message_bytes: Option<usize>,
    publishes_per_partner: Option<usize>,
    publish_items_per_second: Option<u64>,
    streams_per_partner: Option<usize>,
    connections_per_partner: Option<usize>,
    handshakes: Option<usize>,
    handshakes_per_source: Option<usize>,
    handshake_timeout: Option<String>,
    slow_reader_timeout: Option<String>,
    keepalive_interval: Option<String>,
    keepalive_timeout: Option<String>,
    idle_connection_timeout: Option<String>,
    pull_page_bytes: Option<usize>,
    pull_queue_messages: Option<usize>,
    pull_transfer_bytes: Option<usize>,
    query_page_bytes: Option<usize>,
    unsent_answer_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    listen: String,
    data_dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    trust_anchors: Vec<PathBuf>,
    #[serde(default)]
    crls: Vec<PathBuf>,
    #[serde(default)]
    max_clock_skew: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default = "default_cache_mb")]
    cache_mb: u64,
    compact_every: Option<String>,
    keep_expired: Option<String>,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            cache_mb: default_cache_mb(),
            compact_every: None,
            keep_expired: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    segment_bytes: Option<u64>,
    retain_days: Option<u64>,
    retain_bytes: Option<u64>,
    archive_dir: Option<PathBuf>,
}

/// Smallest `ledger.segment_bytes` accepted.
const MIN_SEGMENT_BYTES: u64 = 4096;

/// Default size of the store's page cache, in MiB.
pub const DEFAULT_CACHE_MB: u64 = 32;

/// Default time between two online compactions of the bundle log.
pub const DEFAULT_COMPACT_EVERY: Duration = Duration::from_secs(24 * 3600);

fn default_cache_mb() -> u64 {
    DEFAULT_CACHE_MB
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: String,
    address: String,
    #[serde(default)]
    trust_anchor: Option<PathBuf>,
    #[serde(default = "default_peer_role")]
    role: Role,
    #[serde(default)]
    max_tlp: Option<String>,
    #[serde(default)]
    allow_types: Option<Vec<String>>,
    #[serde(default)]
    deny_types: Vec<String>,
    #[serde(default)]
    allow_tags: Vec<String>,
    #[serde(default)]
    deny_tags: Vec<String>,
    #[serde(default)]
    forward_third_party: bool,
    #[serde(default)]
    embargo: Option<String>,
}

fn default_peer_role() -> Role {
    Role::Peer
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    id: String,
    role: Role,
    #[serde(default)]
    trust_anchor: Option<PathBuf>,
    #[serde(default)]
    max_tlp: Option<String>,
    #[serde(default)]
    allow_types: Option<Vec<String>>,
    #[serde(default)]
    deny_types: Vec<String>,
    #[serde(default)]
    allow_tags: Vec<String>,
    #[serde(default)]
    deny_tags: Vec<String>,
    #[serde(default)]
    forward_third_party: bool,
    #[serde(default)]
    embargo: Option<String>,
}

/// This node's own settings (`[node]`).
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The node id.
    pub id: NodeId,
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Directory of the store.
    pub data_dir: PathBuf,
    /// Certificate, key, trust anchors and CRLs.
    pub tls: TlsPaths,
    /// Page cache of the store, in bytes (`store.cache_mb`).
    pub store_cache_bytes: u64,
    /// Time between two online compactions of the bundle log (`store.compact_every`,
    /// default a day); `None` when turned off (`"0"`).
    pub compact_every: Option<Duration>,
    /// What a compaction keeps (`store.keep_expired`, default 30 days).
    pub compaction: crate::store::compact::Compaction,
    /// The disclosure ledger's segment size and retention (`[ledger]`).
    pub ledger: crate::store::LedgerSettings,
    /// How far in the future an item's `modified` time may lie before it is refused,
    /// at publish and on arrival, ms (`node.max_clock_skew`, default 5m).
    pub max_clock_skew_ms: i64,
    /// Resource limits (`[limits]`).
    pub limits: crate::limits::Limits,
}

/// A `[[peer]]`: another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its id.
    pub id: NodeId,
    /// `host:port` to reach it.
    pub address: String,
    /// `peer` or `read_only`.
    pub role: Role,
    /// The trust anchor (one of `node.trust_anchors`) its certificate must chain to;
    /// `None` when exactly one anchor is configured.
    pub trust_anchor: Option<PathBuf>,
    /// What this peer may receive.
    pub policy: PolicySettings,
}

/// What an external feed speaks (`feed[].kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedKind {
    /// A TAXII 2.1 collection; `url` is its objects endpoint.
    Taxii,
    /// A MISP feed; `url` is the directory holding `manifest.json`.
    Misp,
}

impl FeedKind {
    /// The spelling in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedKind::Taxii => "taxii",
            FeedKind::Misp => "misp",
        }
    }
}

/// Where the password of a feed's HTTP Basic credentials comes from. The password itself
/// is read at each poll and never kept in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// `password_file`: the file's content, without a trailing newline.
    File(PathBuf),
    /// `password_env`: the environment variable's value.
    Env(String),
}

/// HTTP Basic credentials of a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedCredentials {
    /// `username`.
    pub username: String,
    /// Where the password is read from.
    pub password: PasswordSource,
}

/// Default time between two polls of a feed (`feed[].interval`).
pub const DEFAULT_FEED_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Default time one HTTP request of a feed may take, body included (`feed[].timeout`).
pub const DEFAULT_FEED_TIMEOUT: Duration = Duration::from_secs(60);
/// Default largest response body of a feed (`feed[].max_response_bytes`, 32 MiB).
pub const DEFAULT_FEED_MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Largest `feed[].max_response_bytes` accepted (256 MiB).
pub const MAX_FEED_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Default most objects (STIX objects or MISP attributes) taken in one poll.
pub const DEFAULT_FEED_MAX_OBJECTS: usize = 100_000;
/// Default most MISP events fetched in one poll.
pub const DEFAULT_FEED_MAX_EVENTS: usize = 1_000;
/// Default TAXII page size asked for (`limit`).
pub const DEFAULT_FEED_PAGE_SIZE: usize = 1_000;

/// A `[[feed]]`: an external source whose indicators this node publishes as its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedConfig {
    /// `name`: 1 to 48 of a-z, 0-9, '-' and '_'; items get the tag `source:<name>`, and
    /// the feed's checkpoint is kept under it.
    pub name: String,
    /// `kind`.
    pub kind: FeedKind,
    /// `url`, checked: `http` only for loopback addresses or with `allow_http`.
    pub url: http::Uri,
    /// `tlp`: the marking of items whose source gives none.
    pub tlp: Option<Tlp>,
    /// `tags`: added to every item of the feed (after `source:<name>`).
    pub tags: Vec<String>,
    /// `interval` between polls (default 15m, at least 1s).
    pub interval: Duration,
    /// `timeout` of one HTTP request, body included (default 60s).
    pub timeout: Duration,
    /// `max_response_bytes`: a larger body is refused (default 32 MiB).
    pub max_response_bytes: usize,
    /// `max_objects_per_poll`: objects (STIX objects, MISP attributes) taken per poll;
    /// the rest waits for the next poll (default 100000).
    pub max_objects_per_poll: usize,
    /// `max_events_per_poll`: MISP events fetched per poll (default 1000).
    pub max_events_per_poll: usize,
    /// `page_size`: the TAXII `limit` asked for (default 1000).
    pub page_size: usize,
    /// `username` with `password_file` or `password_env`.
    pub credentials: Option<FeedCredentials>,
    /// `ca_file`: CA certificates trusted for this feed besides the public roots.
    pub ca_file: Option<PathBuf>,
    /// `proxy`: an HTTP proxy (`http://host:port`) through which every request of the
    /// feed is tunnelled with `CONNECT` (default: none, a direct connection).
    pub proxy: Option<http::uri::Authority>,
    /// `share_with_peers`: the feed's items go to partner nodes as this node's own
    /// (default false: they count as third-party items, like what another node sent,
    /// so only GREEN and CLEAR ones, and only to peers with `forward_third_party`).
    pub share_with_peers: bool,
}

/// Whether `name` can name a feed: 1 to 48 of a-z, 0-9, '-' and '_'.
pub fn is_feed_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Checks one `[[feed]]`; `field` names its fields in errors.
fn feed_config(
    raw: RawFeed,
    field: &dyn Fn(&str) -> String,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<FeedConfig, (String, String)> {
    let bad = |name: &str, problem: String| (field(name), problem);
    let name = raw.name;
    if !is_feed_name(&name) {
        return Err(bad(
            "name",
            format!("{name:?}: a feed name is 1 to 48 of a-z, 0-9, '-' and '_'"),
        ));
    }
    let kind = match raw.kind.as_str() {
        "taxii" => FeedKind::Taxii,
        "misp" => FeedKind::Misp,
        other => {
            return Err(bad(
                "kind",
                format!("{other:?}: expected \"taxii\" or \"misp\""),
            ));
        }
    };
    let url: http::Uri = raw
        .url
        .parse()
        .map_err(|_| bad("url", format!("{:?} is not a URL", raw.url)))?;
    let host = url.host().unwrap_or_default();
    if host.is_empty() {
        return Err(bad("url", format!("{:?} names no host", raw.url)));
    }
    if url.query().is_some() {
        return Err(bad(
            "url",
            format!("{:?}: give the URL without a query", raw.url),
        ));
    }
    if raw.url.contains('@') {
        return Err(bad(
            "url",
            "credentials go in username and password_file or password_env, not in the URL".into(),
        ));
    }
    match url.scheme_str() {
        Some("https") => {}
        Some("http") => {
            if !raw.allow_http && !is_loopback_host(host) {
                return Err(bad(
                    "url",
                    format!(
                        "{:?}: plain http is allowed only to a loopback address, or with allow_http = true",
                        raw.url
                    ),
                ));
            }
        }
        _ => {
            return Err(bad(
                "url",
                format!("{:?}: the scheme must be https or http", raw.url),
            ));
        }
    }
    if kind == FeedKind::Taxii && !url.path().ends_with("/objects/") {
        return Err(bad(
            "url",
            format!(
                "{:?}: a TAXII feed's url is the collection's objects endpoint, ending in /collections/<id>/objects/",
                raw.url
            ),
        ));
    }
    let tlp = raw
        .tlp
        .as_deref()
        .map(|t| t.parse::<Tlp>().map_err(|e| bad("tlp", e.to_string())))
        .transpose()?;
    let mut tags = Vec::with_capacity(raw.tags.len() + 1);
    tags.push(format!("source:{name}"));
    for tag in raw.tags {
        if tag.is_empty()
            || tag.len() > 64
            || !tag.is_ascii()
            || tag.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad(
                "tags",
                format!("{tag:?}: a tag is 1 to 64 ASCII characters without spaces"),
            ));
        }
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    if tags.len() > 8 {
        return Err(bad("tags", "at most 7 tags besides source:<name>".into()));
    }
    let duration = |key: &str, text: Option<&str>, default: Duration, min_ms: i64, max_ms: i64| {
        let Some(text) = text else {
            return Ok(default);
        };
        let ms = parse_duration_ms(text).map_err(|problem| bad(key, problem))?;
        if ms < min_ms || ms > max_ms {
            return Err(bad(
                key,
                format!(
                    "{text:?} is outside {}s to {}s",
                    min_ms / 1000,
                    max_ms / 1000
                ),
            ));
        }
        Ok(Duration::from_millis(ms as u64))
    };
    let interval = duration(
        "interval",
        raw.interval.as_deref(),
        DEFAULT_FEED_INTERVAL,
        1_000,
        7 * 86_400_000,
    )?;
    let timeout = duration(
        "timeout",
        raw.timeout.as_deref(),
        DEFAULT_FEED_TIMEOUT,
        1_000,
        3_600_000,
    )?;
    let count = |key: &str, value: Option<u64>, default: usize, min: usize, max: usize| {
        let Some(n) = value else {
            return Ok(default);
        };
        match usize::try_from(n) {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(bad(key, format!("{n} is outside {min}..={max}"))),
        }
    };
    let max_response_bytes = count(
        "max_response_bytes",
        raw.max_response_bytes,
        DEFAULT_FEED_MAX_RESPONSE_BYTES,
        1024,
        MAX_FEED_RESPONSE_BYTES,
    )?;
    let max_objects_per_poll = count(
        "max_objects_per_poll",
        raw.max_objects_per_poll,
        DEFAULT_FEED_MAX_OBJECTS,
        1,
        crate::interop::MAX_INPUT_ITEMS,
    )?;
    let max_events_per_poll = count(
        "max_events_per_poll",
        raw.max_events_per_poll,
        DEFAULT_FEED_MAX_EVENTS,
        1,
        1_000_000,
    )?;
    let page_size = count(
        "page_size",
        raw.page_size,
        DEFAULT_FEED_PAGE_SIZE,
        1,
        100_000,
    )?;
    let credentials = match (raw.username, raw.password_file, raw.password_env) {
        (None, None, None) => None,
        (None, _, _) => {
            return Err(bad(
                "username",
                "password_file or password_env is given without a username".into(),
            ));
        }
        (Some(username), file, env) => {
            if username.is_empty()
                || username.contains(':')
                || username.chars().any(char::is_control)
            {
                return Err(bad(
                    "username",
                    "must be non-empty, without ':' or control characters".into(),
                ));
            }
            let password = match (file, env) {
                (Some(file), None) => PasswordSource::File(resolve(&file)),
                (None, Some(env)) if !env.is_empty() && !env.contains('=') => {
                    PasswordSource::Env(env)
                }
                (None, Some(env)) => {
                    return Err(bad(
                        "password_env",
                        format!("{env:?} is not an environment variable name"),
                    ));
                }
                _ => {
                    return Err(bad(
                        "password_file",
                        "give exactly one of password_file and password_env with a username".into(),
                    ));
                }
            };
            Some(FeedCredentials { username, password })
        }
    };
    if credentials.is_some() && url.scheme_str() == Some("http") && !is_loopback_host(host) {
        return Err(bad(
            "username",
            "credentials are sent only over https (or to a loopback address)".into(),
        ));
    }
    let proxy = match raw.proxy.as_deref() {
        None => None,
        Some(text) => {
            let refuse = || {
                bad(
                    "proxy",
                    format!(
                        "{text:?}: give the proxy as http://host:port, without credentials or a path"
                    ),
                )
            };
            let proxy: http::Uri = text.parse().map_err(|_| refuse())?;
            let authority = proxy.authority().cloned().ok_or_else(refuse)?;
            if proxy.scheme_str() != Some("http")
                || authority.as_str().contains('@')
                || authority.port_u16().is_none()
                || authority.host().is_empty()
                || !matches!(proxy.path(), "" | "/")
                || proxy.query().is_some()
            {
                return Err(refuse());
            }
            if credentials.is_some() && url.scheme_str() == Some("http") {
                return Err(bad(
                    "proxy",
                    "credentials are sent through a proxy only over https".into(),
                ));
            }
            Some(authority)
        }
    };
    Ok(FeedConfig {
        name,
        kind,
        url,
        tlp,
        tags,
        interval,
        timeout,
        max_response_bytes,
        max_objects_per_poll,
        max_events_per_poll,
        page_size,
        credentials,
        ca_file: raw.ca_file.map(|p| resolve(&p)),
        proxy,
        share_with_peers: raw.share_with_peers,
    })
}

/// Whether a URL host is a loopback address (`localhost`, 127.0.0.0/8, `[::1]`).
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A `[[client]]`: an analyst, researcher or tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Its id.
    pub id: NodeId,
    /// `read_only`, `analyst` or `admin`.
    pub role: Role,
    /// The trust anchor (one of `node.trust_anchors`) its certificate must chain to;
    /// `None` when exactly one anchor is configured.
    pub trust_anchor: Option<PathBuf>,
    /// What this client may receive.
    pub policy: PolicySettings,
}

pub use crate::policy::PolicySettings;

/// Default largest TAXII request body (`taxii.max_body_bytes`): 8 MiB.
pub const DEFAULT_TAXII_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Largest `taxii.max_body_bytes` accepted: 64 MiB.
pub const MAX_TAXII_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Most `[[taxii.basic]]` entries.
pub const MAX_TAXII_BASIC: usize = 256;

/// The TAXII 2.1 listener (`[taxii]`); absent, no TAXII listener is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaxiiSettings {
    /// Address to serve HTTPS on (`taxii.listen`), distinct from `node.listen`.
    pub listen: SocketAddr,
    /// Largest request body, checked before it is read (`taxii.max_body_bytes`, default
    /// 8 MiB).
    pub max_body_bytes: usize,
    /// HTTP Basic credentials (`[[taxii.basic]]`), each for a read-only client; empty,
    /// every caller must present a client certificate.
    pub basic: Vec<BasicCredential>,
}

/// One `[[taxii.basic]]` entry: the password hash of a read-only `[[client]]`, whose id
/// is the Basic user name.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredential {
    /// The client (`client`), configured in `[[client]]` with role `read_only`.
    pub client: NodeId,
    /// An Argon2id hash in PHC format (`password_hash`), made by `entente taxii
    /// hash-password`.
    pub password_hash: String,
}

impl std::fmt::Debug for BasicCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is not printed: it is what a password guesser would start from.
        f.debug_struct("BasicCredential")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// The operator's admin listener (`[admin]`): Prometheus metrics and the read-only web
/// console over plain HTTP; absent, no admin listener is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// Address to serve on (`admin.listen`): a loopback address, distinct from
    /// `node.listen` and `taxii.listen`.
    pub listen: SocketAddr,
}

/// Parses a duration such as `0`, `90s`, `30m`, `6h`, `2d` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(0);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 90s, 30m, 6h or 2d"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(unit_ms)
        .filter(|ms| *ms <= 365 * 86_400_000)
        .ok_or_else(|| format!("{text:?} is longer than a year"))
}

/// `[limits]`: each value given is checked against a sane range, so that a slip
/// cannot turn a limit off; what is not given keeps its default.
fn limits(
    raw: &RawLimits,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<crate::limits::Limits, ConfigError> {
    use crate::limits::{
        Limits, MAX_PUBLISH_MESSAGE_BYTES, MAX_PULL_TRANSFER_BYTES, publishable_item_bytes,
    };
    let mut limits = Limits::default();
    let count = |key: &str, value: Option<usize>, min: usize, max: usize, slot: &mut usize| {
        if let Some(n) = value {
            if n < min || n > max {
                return Err(invalid(
                    &format!("limits.{key}"),
                    format!("{n} is outside {min}..={max}"),
                ));
            }
            *slot = n;
        }
        Ok(())
    };
    count(
        "publish_message_bytes",
        raw.publish_message_bytes,
        64 * 1024,
        MAX_PUBLISH_MESSAGE_BYTES,
        &mut limits.publish_message_bytes,
    )?;
    count(
        "publishes_per_partner",
        raw.publishes_per_partner,
        1,
        64,
        &mut limits.publishes_per_partner,
    )?;
    count(
        "streams_per_partner",
        raw.streams_per_partner,
        1,
        4096,
        &mut limits.streams_per_partner,
    )?;
    count(
        "connections_per_partner",
        raw.connections_per_partner,
        1,
        4096,
        &mut limits.connections_per_partner,
    )?;
    count(
        "handshakes",
        raw.handshakes,
        1,
        65_536,
        &mut limits.handshakes,
    )?;
    count(
        "handshakes_per_source",
        raw.handshakes_per_source,
        1,
        65_536,
        &mut limits.handshakes_per_source,
    )?;
    count(
        "pull_page_bytes",
        raw.pull_page_bytes,
        64 * 1024,
        64 * 1024 * 1024,
        &mut limits.pull_page_bytes,
    )?;
    count(
        "pull_queue_messages",
        raw.pull_queue_messages,
        1,
        64,
        &mut limits.pull_queue_messages,
    )?;
    // Never less than what a bundle published under this node's own publish limit can
    // bring: what this node lets its clients publish can always cross a link to it (in
    // a federation whose nodes share their limits, every bundle crosses).
    let least = publishable_item_bytes(limits.publish_message_bytes);
    if let Some(n) = raw.pull_transfer_bytes
        && n < least
    {
        return Err(invalid(
            "limits.pull_transfer_bytes",
            format!(
                "{n} is less than {least}, what a bundle published under limits.publish_message_bytes ({}) can bring: such a bundle could not cross a link to this node (lower publish_message_bytes too)",
                limits.publish_message_bytes
            ),
        ));
    }
    count(
        "pull_transfer_bytes",
        raw.pull_transfer_bytes,
        least,
        MAX_PULL_TRANSFER_BYTES,
        &mut limits.pull_transfer_bytes,
    )?;
    count(
        "query_page_bytes",
        raw.query_page_bytes,
        64 * 1024,
        64 * 1024 * 1024,
        &mut limits.query_page_bytes,
    )?;
    count(
        "unsent_answer_bytes",
        raw.unsent_answer_bytes,
        limits.query_page_bytes,
        1 << 30,
        &mut limits.unsent_answer_bytes,
    )?;
    if let Some(rate) = raw.publish_items_per_second {
        limits.publish_items_per_second = rate;
    }
    let duration =
        |key: &str, value: &Option<String>, min_ms: i64, max_ms: i64, slot: &mut Duration| {
            if let Some(text) = value {
                let field = format!("limits.{key}");
                let ms = parse_duration_ms(text).map_err(|problem| invalid(&field, problem))?;
                if ms < min_ms || ms > max_ms {
                    return Err(invalid(
                        &field,
                        format!(
                            "{text:?} is outside {}s..={}s",
                            min_ms / 1000,
                            max_ms / 1000
                        ),
                    ));
                }
                *slot = Duration::from_millis(ms as u64);
            }
            Ok(())
        };
    duration(
        "handshake_timeout",
        &raw.handshake_timeout,
        1_000,
        120_000,
        &mut limits.handshake_timeout,
    )?;
    duration(
        "slow_reader_timeout",
        &raw.slow_reader_timeout,
        1_000,
        3_600_000,
        &mut limits.slow_reader_timeout,
    )?;
    duration(
        "keepalive_interval",
        &raw.keepalive_interval,
        1_000,
        3_600_000,
        &mut limits.keepalive_interval,
    )?;
    duration(
        "keepalive_timeout",
        &raw.keepalive_timeout,
        1_000,
        600_000,
        &mut limits.keepalive_timeout,
    )?;
    duration(
        "idle_connection_timeout",
        &raw.idle_connection_timeout,
        1_000,
        86_400_000,
        &mut limits.idle_connection_timeout,
    )?;
    if limits.handshakes_per_source > limits.handshakes {
        return Err(invalid(
            "limits.handshakes_per_source",
            format!(
                "{} is more than limits.handshakes ({})",
                limits.handshakes_per_source, limits.handshakes
            ),
        ));
    }
    Ok(limits)
}

#[allow(clippy::too_many_arguments)]
fn policy_settings(
    field: &dyn Fn(&str) -> String,
    max_tlp: Option<String>,
    allow_types: Option<Vec<String>>,
    deny_types: Vec<String>,
    allow_tags: Vec<String>,
    deny_tags: Vec<String>,
    forward_third_party: bool,
    embargo: Option<String>,
) -> Result<PolicySettings, (String, String)> {
    let max_tlp = max_tlp
        .map(|t| {
            t.parse::<Tlp>()
                .map_err(|e| (field("max_tlp"), e.to_string()))
        })
        .transpose()?;
    let parse_types =
        |name: &str, list: Vec<String>| -> Result<Vec<IndicatorType>, (String, String)> {
            if list.iter().any(|t| t == "*") {
                if list.len() > 1 {
                    return Err((field(name), "\"*\" must stand alone".into()));
                }
                return Ok(IndicatorType::ALL.to_vec());
            }
            list.iter()
                .map(|t| {
                    t.parse::<IndicatorType>()
                        .map_err(|e| (field(name), e.to_string()))
                })
                .collect()
        };
    let allow_types = allow_types
        .map(|l| parse_types("allow_types", l))
        .transpose()?;
    let deny_types = parse_types("deny_types", deny_types)?;
    for (name, tags) in [("allow_tags", &allow_tags), ("deny_tags", &deny_tags)] {
        if let Some(bad) = tags.iter().find(|t| {
            t.is_empty()
                || t.len() > 64
                || !t.is_ascii()
                || t.chars().any(|c| c.is_whitespace() || c.is_control())
        }) {
            return Err((
                field(name),
                format!("{bad:?} is not a tag (1 to 64 plain ASCII characters, no spaces)"),
            ));
        }
    }
    let embargo_ms = match embargo {
        None => 0,
        Some(e) => parse_duration_ms(&e).map_err(|problem| (field("embargo"), problem))?,
    };
    Ok(PolicySettings {
        max_tlp,
        allow_types,
        deny_types,
        allow_tags,
        deny_tags,
        forward_third_party,
        embargo_ms,
    })
}

/// A configuration whose every field is checked, before the TLS files it names are
/// read ([`Config::check`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[node]` and `[store]`.
    pub node: NodeSettings,
    /// `[[peer]]` entries.
    pub peers: Vec<PeerConfig>,
    /// `[[client]]` entries.
    pub clients: Vec<ClientConfig>,
    /// `[groups]`: sharing groups by name.
    pub groups: std::collections::BTreeMap<String, Vec<NodeId>>,
    /// `[[feed]]` entries.
    pub feeds: Vec<FeedConfig>,
    /// `[taxii]`, if configured.
    pub taxii: Option<TaxiiSettings>,
    /// `[admin]`, if configured.
    pub admin: Option<AdminSettings>,
}

/// A validated node configuration with its TLS material loaded.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// `[node]`.
    pub node: NodeSettings,
    /// `[[peer]]` entries.
    pub peers: Vec<PeerConfig>,
    /// `[[client]]` entries.
    pub clients: Vec<ClientConfig>,
    /// `[groups]`: named lists of node ids, expanded into a bundle's recipients at publish time.
    pub groups: std::collections::BTreeMap<String, Vec<NodeId>>,
    /// `[[feed]]` entries: external sources this node publishes from.
    pub feeds: Vec<FeedConfig>,
    /// `[taxii]`: the TAXII 2.1 listener, if configured.
    pub taxii: Option<TaxiiSettings>,
    /// `[admin]`: the metrics and console listener, if configured.
    pub admin: Option<AdminSettings>,
    /// The node's certificate, key, anchors and CRLs, loaded and checked.
    pub tls: TlsMaterial,
}

impl Config {
    /// Reads, parses and validates a configuration file, including the TLS files it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_bounded(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses and validates configuration text; `base` resolves relative paths.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let Settings {
            node,
            peers,
            clients,
            groups,
            feeds,
            taxii,
            admin,
        } = Self::check(text, path, base)?;
        let tls = TlsMaterial::load(&node.tls, &node.id).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            field: tls_field(&e, &node.tls, "node"),
            problem: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_owned(),
            node,
            peers,
            clients,
            groups,
            feeds,
            taxii,
            admin,
            tls,
        })
    }

    /// Parses and validates configuration text without reading the TLS files it names
    /// (the first half of [`Config::parse`]); `base` resolves relative paths.
    pub fn check(text: &str, path: &Path, base: &Path) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        let invalid = |field: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            problem,
        };
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };

        let id = NodeId::new(&raw.node.id).map_err(|e| invalid("node.id", e.to_string()))?;
        let listen: SocketAddr = raw.node.listen.parse().map_err(|_| {
            invalid(
                "node.listen",
                format!(
                    "{:?} is not an address:port such as 0.0.0.0:7443",
                    raw.node.listen
                ),
            )
        })?;
        if raw.node.data_dir.as_os_str().is_empty() {
            return Err(invalid("node.data_dir", "must not be empty".into()));
        }
        check_data_dir(&resolve(&raw.node.data_dir))
            .map_err(|problem| invalid("node.data_dir", problem))?;
        if !(4..=65_536).contains(&raw.store.cache_mb) {
            return Err(invalid(
                "store.cache_mb",
                format!("{} is outside 4 to 65536", raw.store.cache_mb),
            ));
        }
        let compact_every = match raw.store.compact_every.as_deref() {
            None => Some(DEFAULT_COMPACT_EVERY),
            Some(text) => match parse_duration_ms(text)
                .map_err(|problem| invalid("store.compact_every", problem))?
            {
                0 => None,
                ms => Some(Duration::from_millis(ms.unsigned_abs())),
            },
        };
        let compaction = crate::store::compact::Compaction {
            keep_expired_ms: match raw.store.keep_expired.as_deref() {
                None => crate::store::compact::Compaction::default().keep_expired_ms,
                Some(text) => parse_duration_ms(text)
                    .map_err(|problem| invalid("store.keep_expired", problem))?,
            },
        };
        let ledger = {
            let raw = &raw.ledger;
            let segment_bytes = raw
                .segment_bytes
                .unwrap_or(crate::store::DEFAULT_SEGMENT_BYTES);
            if !(MIN_SEGMENT_BYTES..=crate::store::MAX_SEGMENT_BYTES).contains(&segment_bytes) {
                return Err(invalid(
                    "ledger.segment_bytes",
                    format!(
                        "{segment_bytes} is outside {MIN_SEGMENT_BYTES} to {}",
                        crate::store::MAX_SEGMENT_BYTES
                    ),
                ));
            }
            if raw.retain_days == Some(0) {
                return Err(invalid(
                    "ledger.retain_days",
                    "must be at least 1 (leave it out to keep every segment)".into(),
                ));
            }
            if let Some(bytes) = raw.retain_bytes {
                if bytes < segment_bytes.saturating_mul(2) {
                    return Err(invalid(
                        "ledger.retain_bytes",
                        format!(
                            "{bytes} is less than two segments ({} bytes): the segment being written is always kept",
                            segment_bytes.saturating_mul(2)
                        ),
                    ));
                }
            }
            if raw
                .archive_dir
                .as_ref()
                .is_some_and(|d| d.as_os_str().is_empty())
            {
                return Err(invalid("ledger.archive_dir", "must not be empty".into()));
            }
            crate::store::LedgerSettings {
                segment_bytes,
                retain_days: raw.retain_days,
                retain_bytes: raw.retain_bytes,
                archive_dir: raw.archive_dir.as_deref().map(resolve),
            }
        };
        if raw.node.trust_anchors.is_empty() {
            return Err(invalid(
                "node.trust_anchors",
                "at least one CA certificate is required".into(),
            ));
        }

        let trust_anchors: Vec<PathBuf> =
            raw.node.trust_anchors.iter().map(|p| resolve(p)).collect();
        let pin = |field: &str, named: Option<PathBuf>| -> Result<Option<PathBuf>, ConfigError> {
            pinned_anchor(&trust_anchors, named.map(|p| resolve(&p)))
                .map_err(|problem| invalid(field, problem))
        };

        let mut seen = HashSet::from([id.clone()]);
        let mut peers = Vec::with_capacity(raw.peer.len());
        for (i, p) in raw.peer.into_iter().enumerate() {
            let field = |name: &str| format!("peer[{i}].{name}");
            let peer_id = NodeId::new(&p.id).map_err(|e| invalid(&field("id"), e.to_string()))?;
            if !seen.insert(peer_id.clone()) {
                return Err(invalid(
                    &field("id"),
                    format!("{peer_id} is this node or is configured more than once"),
                ));
            }
            if !matches!(p.role, Role::Peer | Role::ReadOnly) {
                return Err(invalid(
                    &field("role"),
                    format!("a peer's role must be peer or read_only, not {}", p.role),
                ));
            }
            check_address(&p.address).map_err(|problem| invalid(&field("address"), problem))?;
            let trust_anchor = pin(&field("trust_anchor"), p.trust_anchor)?;
            let policy = policy_settings(
                &field,
                p.max_tlp,
                p.allow_types,
                p.deny_types,
                p.allow_tags,
                p.deny_tags,
                p.forward_third_party,
                p.embargo,
            )
            .map_err(|(f, problem)| invalid(&f, problem))?;
            peers.push(PeerConfig {
                id: peer_id,
                address: p.address,
                role: p.role,
                trust_anchor,
                policy,
            });
        }
        let mut clients = Vec::with_capacity(raw.client.len());
        for (i, c) in raw.client.into_iter().enumerate() {
            let field = |name: &str| format!("client[{i}].{name}");
            let client_id = NodeId::new(&c.id).map_err(|e| invalid(&field("id"), e.to_string()))?;
            if !seen.insert(client_id.clone()) {
                return Err(invalid(
                    &field("id"),
                    format!("{client_id} is this node or is configured more than once"),
                ));
            }
            if c.role == Role::Peer {
                return Err(invalid(
                    &field("role"),
                    "a client's role must be read_only, analyst or admin; nodes go in [[peer]]"
                        .into(),
                ));
            }
            if c.forward_third_party {
                return Err(invalid(
                    &field("forward_third_party"),
                    "applies to peer nodes only; a client receives what its policy allows".into(),
                ));
            }
            let trust_anchor = pin(&field("trust_anchor"), c.trust_anchor)?;
            let policy = policy_settings(
                &field,
                c.max_tlp,
                c.allow_types,
                c.deny_types,
                c.allow_tags,
                c.deny_tags,
                false,
                c.embargo,
            )
            .map_err(|(f, problem)| invalid(&f, problem))?;
            clients.push(ClientConfig {
                id: client_id,
                role: c.role,
                trust_anchor,
                policy,
            });
        }

        let mut groups = std::collections::BTreeMap::new();
        for (name, members) in raw.groups {
            let field = format!("groups.{name}");
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            {
                return Err(invalid(
                    &field,
                    "a group name is 1 to 64 of a-z, 0-9, '-' and '_'".into(),
                ));
            }
            if members.is_empty() {
                return Err(invalid(&field, "a group needs at least one node id".into()));
            }
            let members = members
                .iter()
                .map(|m| NodeId::new(m).map_err(|e| invalid(&field, format!("{m:?}: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            // A recipient list names nodes; a client in it would be bound by nothing.
            if let Some(client) = members.iter().find(|m| clients.iter().any(|c| &c.id == *m)) {
                return Err(invalid(
                    &field,
                    format!(
                        "{client} is a [[client]]: a group names nodes (a recipient list binds nodes only)"
                    ),
                ));
            }
            groups.insert(name, members);
        }

        let tls_paths = TlsPaths {
            cert: resolve(&raw.node.cert),
            key: resolve(&raw.node.key),
            trust_anchors,
            crls: raw
                .node
                .crls
                .iter()
                .map(|p| resolve(p))
                .chain(federation_crls(&resolve(&raw.node.data_dir)))
                .collect(),
        };
        let max_clock_skew_ms = match &raw.node.max_clock_skew {
            None => crate::policy::DEFAULT_MAX_CLOCK_SKEW_MS,
            Some(text) => {
                let ms = parse_duration_ms(text)
                    .map_err(|problem| invalid("node.max_clock_skew", problem))?;
                if ms > 86_400_000 {
                    return Err(invalid(
                        "node.max_clock_skew",
                        format!("{text:?} is longer than a day"),
                    ));
                }
                ms
            }
        };

        let limits = limits(&raw.limits, &invalid)?;
        let taxii = match raw.taxii {
            None => None,
            Some(taxii) => Some(taxii_settings(taxii, listen, &clients, &invalid)?),
        };

        let admin = match raw.admin {
            None => None,
            Some(admin) => Some(admin_settings(
                admin,
                listen,
                taxii.as_ref().map(|t| t.listen),
                &invalid,
            )?),
        };

        let mut feeds: Vec<FeedConfig> = Vec::with_capacity(raw.feed.len());
        for (i, f) in raw.feed.into_iter().enumerate() {
            let field = |name: &str| format!("feed[{i}].{name}");
            let feed =
                feed_config(f, &field, &resolve).map_err(|(f, problem)| invalid(&f, problem))?;
            if feeds.iter().any(|other| other.name == feed.name) {
                return Err(invalid(
                    &field("name"),
                    format!("{:?} is the name of another feed", feed.name),
                ));
            }
            feeds.push(feed);
        }

        Ok(Settings {
            node: NodeSettings {
                id,
                listen,
                data_dir: resolve(&raw.node.data_dir),
                tls: tls_paths,
                store_cache_bytes: raw.store.cache_mb * 1024 * 1024,
                compact_every,
                compaction,
                ledger,
                max_clock_skew_ms,
                limits,
            },
            peers,
            clients,
            groups,
            feeds,
            taxii,
            admin,
        })
    }

    /// The typed input of the sharing policy: every partner with its policy fields, the
    /// sharing groups and the clock skew.
    pub fn policy_spec(&self) -> crate::policy::PolicySpec {
        self.policy_spec_knowing(&[])
    }

    /// The policy as [`Config::policy_spec`] gives it, with `known_feeds` (the feeds
    /// this node was configured with before, from `feeds.known`): one not configured now
    /// keeps the setting it had when last configured, so taking a feed out of the
    /// configuration neither releases what it brought in nor holds back what it shared.
    pub fn policy_spec_knowing(
        &self,
        known_feeds: &[crate::feeds::known::KnownFeed],
    ) -> crate::policy::PolicySpec {
        let peers = self.peers.iter().map(|p| crate::policy::PartnerSpec {
            partner: Partner {
                id: p.id.clone(),
                kind: PartnerKind::Node,
                role: p.role,
            },
            settings: p.policy.clone(),
        });
        let clients = self.clients.iter().map(|c| crate::policy::PartnerSpec {
            partner: Partner {
                id: c.id.clone(),
                kind: PartnerKind::Client,
                role: c.role,
            },
            settings: c.policy.clone(),
        });
        crate::policy::PolicySpec {
            node: self.node.id.clone(),
            partners: peers.chain(clients).collect(),
            groups: self.groups.clone(),
            max_clock_skew_ms: self.node.max_clock_skew_ms,
            feeds: self
                .feeds
                .iter()
                .filter(|feed| !feed.share_with_peers)
                .map(|feed| feed.name.as_str())
                .chain(
                    known_feeds
                        .iter()
                        .filter(|known| {
                            !known.shared && !self.feeds.iter().any(|feed| feed.name == known.name)
                        })
                        .map(|known| known.name.as_str()),
                )
                .map(|name| format!("source:{name}"))
                .collect(),
        }
    }

    /// Every configured partner, as the transport layer identifies them.
    pub fn partners(&self) -> impl Iterator<Item = Partner> + '_ {
        let peers = self.peers.iter().map(|p| Partner {
            id: p.id.clone(),
            kind: PartnerKind::Node,
            role: p.role,
        });
        let clients = self.clients.iter().map(|c| Partner {
            id: c.id.clone(),
            kind: PartnerKind::Client,
            role: c.role,
        });
        peers.chain(clients)
    }

    /// Every configured partner with the trust anchor its certificate must chain to,
    /// as the node's directory holds them.
    pub fn listings(&self) -> Vec<Listing> {
        let anchors = self
            .peers
            .iter()
            .map(|p| p.trust_anchor.clone())
            .chain(self.clients.iter().map(|c| c.trust_anchor.clone()));
        self.partners()
            .zip(anchors)
            .map(|(partner, trust_anchor)| Listing {
                partner,
                trust_anchor,
            })
            .collect()
    }
}

/// `[admin]`, checked: a loopback address other than `node.listen` and `taxii.listen`.
/// The listener speaks plain HTTP without client authentication, so only processes on
/// this host may reach it.
fn admin_settings(
    raw: RawAdmin,
    node_listen: SocketAddr,
    taxii_listen: Option<SocketAddr>,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<AdminSettings, ConfigError> {
    let listen: SocketAddr = raw.listen.parse().map_err(|_| {
        invalid(
            "admin.listen",
            format!(
                "{:?} is not an address:port such as 127.0.0.1:9464",
                raw.listen
            ),
        )
    })?;
    if !listen.ip().is_loopback() {
        return Err(invalid(
            "admin.listen",
            format!(
                "{listen} is not a loopback address: the admin listener has no authentication, so it listens only on 127.0.0.1 or [::1] (reach it from elsewhere through an SSH tunnel or a proxy that authenticates)"
            ),
        ));
    }
    let same_as = |other: SocketAddr| listen.port() != 0 && listen == other;
    if same_as(node_listen) {
        return Err(invalid(
            "admin.listen",
            "must differ from node.listen (the admin listener has its own port)".into(),
        ));
    }
    if taxii_listen.is_some_and(same_as) {
        return Err(invalid(
            "admin.listen",
            "must differ from taxii.listen (the admin listener has its own port)".into(),
        ));
    }
    Ok(AdminSettings { listen })
}

/// `[taxii]`, checked: an address other than `node.listen`, a body limit in range, and
/// Basic credentials only for configured read-only clients, each with an Argon2id hash.
fn taxii_settings(
    raw: RawTaxii,
    node_listen: SocketAddr,
    clients: &[ClientConfig],
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<TaxiiSettings, ConfigError> {
    let listen: SocketAddr = raw.listen.parse().map_err(|_| {
        invalid(
            "taxii.listen",
            format!(
                "{:?} is not an address:port such as 0.0.0.0:8443",
                raw.listen
            ),
        )
    })?;
    if listen.port() != 0 && listen == node_listen {
        return Err(invalid(
            "taxii.listen",
            "must differ from node.listen (TAXII has its own listener)".into(),
        ));
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_TAXII_MAX_BODY_BYTES);
    if !(1024..=MAX_TAXII_MAX_BODY_BYTES).contains(&max_body_bytes) {
        return Err(invalid(
            "taxii.max_body_bytes",
            format!("{max_body_bytes} is outside 1024 to {MAX_TAXII_MAX_BODY_BYTES}"),
        ));
    }
    if raw.basic.len() > MAX_TAXII_BASIC {
        return Err(invalid(
            "taxii.basic",
            format!("at most {MAX_TAXII_BASIC} entries"),
        ));
    }
    let mut basic: Vec<BasicCredential> = Vec::with_capacity(raw.basic.len());
    for (i, entry) in raw.basic.into_iter().enumerate() {
        let field = |name: &str| format!("taxii.basic[{i}].{name}");
        let client =
            NodeId::new(&entry.client).map_err(|e| invalid(&field("client"), e.to_string()))?;
        match clients.iter().find(|c| c.id == client) {
            None => {
                return Err(invalid(
                    &field("client"),
                    format!("{client} is not a configured [[client]]"),
                ));
            }
            Some(c) if c.role != Role::ReadOnly => {
                return Err(invalid(
                    &field("client"),
                    format!(
                        "{client} has role {}; HTTP Basic is only for read_only clients (others present a certificate)",
                        c.role
                    ),
                ));
            }
            Some(_) => {}
        }
        if basic.iter().any(|b| b.client == client) {
            return Err(invalid(
                &field("client"),
                format!("{client} has more than one entry"),
            ));
        }
        crate::crypto::password::check_password_hash(&entry.password_hash)
            .map_err(|problem| invalid(&field("password_hash"), problem))?;
        basic.push(BasicCredential {
            client,
            password_hash: entry.password_hash,
        });
    }
    Ok(TaxiiSettings {
        listen,
        max_body_bytes,
        basic,
    })
}

/// Checks that the data directory is a directory, or does not exist yet (the node creates
/// it): a file or an unreachable path there would otherwise only show when the store opens.
/// Most CRL files read from `DATA_DIR/crls` (one per issuer is written there).
const MAX_FEDERATION_CRLS: usize = 64;

/// The CRLs this node received from the federation and put in force
/// (`DATA_DIR/crls/*.pem`), sorted by name; none when the directory does not exist.
fn federation_crls(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("crls")) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    paths.sort();
    paths.truncate(MAX_FEDERATION_CRLS);
    paths
}

fn check_data_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "{} exists and is not a directory; point data_dir at a directory (the node \
             creates it when it does not exist)",
            dir.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{} cannot be used: {e}", dir.display())),
    }
}

/// The anchor a partner is pinned to: the one it names, which must be one of
/// `node.trust_anchors`; without a name, nothing to pin when exactly one anchor is
/// configured, and an error when there are several (default deny).
fn pinned_anchor(anchors: &[PathBuf], named: Option<PathBuf>) -> Result<Option<PathBuf>, String> {
    let list = || {
        anchors
            .iter()
            .map(|a| a.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(named) = named else {
        if anchors.len() > 1 {
            return Err(format!(
                "node.trust_anchors names {} CAs, so each peer and client must name the one its certificate chains to (one of {})",
                anchors.len(),
                list()
            ));
        }
        return Ok(None);
    };
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    anchors
        .iter()
        .find(|a| **a == named || canonical(a).is_some_and(|c| Some(c) == canonical(&named)))
        .map(|a| Some(a.clone()))
        .ok_or_else(|| {
            format!(
                "{} is not one of node.trust_anchors ({})",
                named.display(),
                list()
            )
        })
}

/// Reads a configuration file of at most [`MAX_CONFIG_BYTES`].
fn read_bounded(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = match crate::util::read_small_file(path, MAX_CONFIG_BYTES) {
        Ok(bytes) => bytes,
        Err(crate::util::SmallFileError::Io(e)) => return Err(read_err(e)),
        Err(problem) => {
            return Err(ConfigError::Syntax {
                path: path.to_owned(),
                message: match problem {
                    crate::util::SmallFileError::TooLarge => {
                        format!("file is larger than {MAX_CONFIG_BYTES} bytes")
                    }
                    other => other.to_string(),
                },
            });
        }
    };
    String::from_utf8(bytes).map_err(|_| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

/// The configuration field a TLS loading error concerns, in `section` (`node` or `client`).
fn tls_field(error: &TlsError, paths: &TlsPaths, section: &str) -> String {
    let name = match error.path() {
        Some(p) if p == paths.key => "key",
        Some(p) if paths.trust_anchors.iter().any(|a| a == p) => "trust_anchors",
        Some(p) if paths.crls.iter().any(|c| c == p) => "crls",
        Some(_) => "cert",
        None => match error {
            TlsError::Verifier(_) => "crls",
            _ => "key",
        },
    };
    format!("{section}.{name}")
}

fn check_address(address: &str) -> Result<(), String> {
    let problem = || format!("{address:?} is not host:port");
    let (host, port) = address.rsplit_once(':').ok_or_else(problem)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(problem());
    }
    Ok(())
}

/// The starter configuration written by `entente init`.
pub fn starter_config(id: &NodeId, listen: &str, cert_dir: &str) -> String {
    format!(
        r#"# Entente node configuration. Relative paths are resolved against this file's directory.

[node]
# This node's id: the first DNS subject-alternative name of its certificate.
id = "{id}"
# Address and port to serve mutually authenticated gRPC on.
listen = "{listen}"
# Directory of the node's store (created if missing).
data_dir = "data"
# The node's certificate chain (PEM, leaf first) and private key (PEM, mode 0600).
cert = "{cert_dir}/{id}.crt"
key = "{cert_dir}/{id}.key"
# CA certificates of the federation; peers and clients must chain to one of them.
trust_anchors = ["{cert_dir}/ca.crt"]
# Certificate revocation lists (PEM), e.g. the crl.pem written by `entente certs revoke`.
crls = []
# How far in the future an item's modified time may lie before it is refused (a
# version dated far ahead would pin the item so no update or revocation replaces it).
max_clock_skew = "5m"

[store]
# Page cache of the store in MiB; the node's memory use grows with it.
cache_mb = 32
# The bundle log is compacted online this often ("0": never): superseded versions,
# and indicators expired for longer than keep_expired, are dropped; revocations stay.
# compact_every = "1d"
# keep_expired = "30d"

# The disclosure ledger is kept in segment files under data_dir/ledger.
# [ledger]
# segment_bytes = 8388608     # a segment is closed, and the next begun, at this size
# retain_days = 400           # closed segments older than this are dropped (default: all kept)
# retain_bytes = 10737418240  # beyond this, the oldest closed segments are dropped
# archive_dir = "ledger-archive"  # dropped segments are moved here instead of deleted

# One [[peer]] per federation node this node exchanges bundles with.
# [[peer]]
# id = "berlin.office"
# address = "berlin.example.org:7443"
# role = "peer"        # peer (default) or read_only
# trust_anchor = "{cert_dir}/ca.crt"   # the CA its certificate must chain to; required
#                                      # for every partner when trust_anchors lists several

# One [[client]] per analyst, researcher or tool allowed to connect.
# [[client]]
# id = "researcher.uni-x"
# role = "read_only"   # read_only, analyst or admin
"#
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientFile {
    client: RawClientSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientSettings {
    id: String,
    cert: PathBuf,
    key: PathBuf,
    trust_anchors: Vec<PathBuf>,
    #[serde(default)]
    crls: Vec<PathBuf>,
    node: String,
    node_id: String,
}

/// How a command-line client reaches its node: its own identity and the node's.
#[derive(Debug)]
pub struct ClientSettings {
    /// The client's id (or the node's, when a node configuration is used).
    pub id: NodeId,
    /// `host:port` of the node.
    pub node_address: String,
    /// The node's id, checked against its certificate.
    pub node_id: NodeId,
    /// The client's certificate, key, anchors and CRLs.
    pub tls: TlsMaterial,
}

impl ClientSettings {
    /// Loads a client configuration (`[client]`), or a node configuration (`[node]`),
    /// in which case the node's own certificate is used to reach the node itself.
    ///
    /// ```toml
    /// [client]
    /// id = "analyst.alice"             # the first DNS SAN of cert
    /// cert = "analyst.alice.crt"
    /// key = "analyst.alice.key"        # mode 0600
    /// trust_anchors = ["ca.crt"]
    /// crls = []
    /// node = "hq.example.org:7443"     # host:port of the node
    /// node_id = "redmond.hq"           # the node's id, checked against its certificate
    /// ```
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_bounded(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let is_node = text.lines().any(|l| l.trim_start().starts_with("[node]"));
        if is_node {
            let config = Config::parse(&text, path, base)?;
            let mut addr = config.node.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            return Ok(Self {
                id: config.node.id.clone(),
                node_address: addr.to_string(),
                node_id: config.node.id,
                tls: config.tls,
            });
        }
        let raw: RawClientFile = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        let raw = raw.client;
        let invalid = |field: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            problem,
        };
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let id = NodeId::new(&raw.id).map_err(|e| invalid("client.id", e.to_string()))?;
        let node_id =
            NodeId::new(&raw.node_id).map_err(|e| invalid("client.node_id", e.to_string()))?;
        check_address(&raw.node).map_err(|problem| invalid("client.node", problem))?;
        if raw.trust_anchors.is_empty() {
            return Err(invalid(
                "client.trust_anchors",
                "at least one CA certificate is required".into(),
            ));
        }
        let paths = TlsPaths {
            cert: resolve(&raw.cert),
            key: resolve(&raw.key),
            trust_anchors: raw.trust_anchors.iter().map(|p| resolve(p)).collect(),
            crls: raw.crls.iter().map(|p| resolve(p)).collect(),
        };
        let tls = TlsMaterial::load(&paths, &id)
            .map_err(|e| invalid(&tls_field(&e, &paths, "client"), e.to_string()))?;
        Ok(Self {
            id,
            node_address: raw.node,
            node_id,
            tls,
        })
    }
}

/// A starter client configuration, for `entente certs client --config-out`.
pub fn starter_client_config(id: &NodeId, node_address: &str, node_id: &NodeId) -> String {
    format!(
        r#"# Entente client configuration. Relative paths are resolved against this file's directory.

[client]
# This client's id: the first DNS subject-alternative name of its certificate.
id = "{id}"
cert = "{id}.crt"
# Private key, readable by its owner only (mode 0600).
key = "{id}.key"
# The federation CA; the node's certificate must chain to it.
trust_anchors = ["ca.crt"]
crls = []
# Where the node is, and its id (checked against the node's certificate).
node = "{node_address}"
node_id = "{node_id}"
"#
    )
}
