//! `entente status`: who answers at a node, and, for its operator, the node's
//! replication links, feeds and limits; with `--wait`, follows the links until caught up.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::time::optional_timestamp;
use super::{Output, print_json};
use crate::Config;
use crate::client::NodeClient;
use crate::engine::now_ms;
use crate::model::NodeId;
use crate::rpc::proto::{FeedStatus, LimitState, LinkStatus};
use crate::transport::expiry::{CertificateRole, EXPIRY_WARNING, WatchedCertificate};

/// What `entente status` asks.
pub struct StatusOptions {
    /// A configured peer id or `ID@HOST:PORT`; the configured node itself when `None`.
    pub target: Option<String>,
    /// `Some(deadline)` to follow the links until caught up (`--wait`, `--timeout`).
    pub wait: Option<Option<Duration>>,
}

/// The configuration `entente status` was given: the node's own (its certificate speaks
/// as the operator), or a client's (`[client]`, an `admin` client for the operator's
/// view).
pub enum StatusConfig {
    /// A node configuration.
    Node(Box<Config>),
    /// A client configuration.
    Client(Box<crate::config::ClientSettings>),
}

impl StatusConfig {
    /// Loads either kind of file: a client configuration has a `[client]` table.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let settings = crate::config::ClientSettings::load(path)?;
        Ok(if settings.id == settings.node_id {
            // A node configuration (the node's own certificate): its peers and listen
            // address are needed too.
            Self::Node(Box::new(Config::load(path)?))
        } else {
            Self::Client(Box::new(settings))
        })
    }

    fn tls(&self) -> &crate::transport::TlsMaterial {
        match self {
            Self::Node(config) => &config.tls,
            Self::Client(settings) => &settings.tls,
        }
    }
}

/// `entente status`.
pub async fn status(config: StatusConfig, options: StatusOptions, output: Output) -> Result<()> {
    let (own, id, address) = match &config {
        StatusConfig::Node(config) => {
            let (id, address) = target(config, options.target)?;
            (config.node.id.clone(), id, address)
        }
        StatusConfig::Client(settings) => {
            let (id, address) = match options.target {
                None => (settings.node_id.clone(), settings.node_address.clone()),
                Some(target) => match target.split_once('@') {
                    Some((id, address)) => (
                        id.parse::<NodeId>().context("--node ID@HOST:PORT")?,
                        address.to_owned(),
                    ),
                    None => bail!(
                        "with a client configuration, --node takes ID@HOST:PORT (a client configuration names no peers)"
                    ),
                },
            };
            (settings.id.clone(), id, address)
        }
    };
    let tls = config.tls().client_config()?;
    let client = NodeClient::connect(tls, &own, &address, &id).await?;
    let hello = client.hello().await?;
    // The operator also sees the node's replication links, feeds and limits. An admin
    // whose policy is narrowed may not read them: it is shown the rest, as any other
    // caller.
    let links = if hello.caller_role == "admin" {
        match client.links().await {
            Ok(answer) => Some(answer.links),
            Err(crate::client::ClientError::Status {
                code: tonic::Code::PermissionDenied,
                ..
            }) => None,
            Err(other) => return Err(other.into()),
        }
    } else {
        None
    };
    let admin = links.is_some();
    if options.wait.is_some() && !admin {
        bail!(
            "--wait follows the node's links, which only its operator (its own certificate or an admin client whose policy is not narrowed) may read"
        );
    }
    let (feeds, limits) = if admin {
        (
            Some(client.feeds().await?.feeds),
            Some(client.limits().await?.limits),
        )
    } else {
        (None, None)
    };
    // And the store's state (a node too old to report it: none).
    let store = if admin {
        match client.store_state().await {
            Ok(state) => Some(state),
            Err(crate::client::ClientError::Status {
                code: tonic::Code::Unimplemented,
                ..
            }) => None,
            Err(other) => return Err(other.into()),
        }
    } else {
        None
    };
    let now = now_ms();
    let certificates = watched_certificates(&config, &client, admin).await?;
    if output.is_json() {
        // With --wait, one object once caught up (the links then as they stand).
        let synced = match options.wait {
            Some(deadline) => Some(wait_for_sync(&client, deadline).await?),
            None => None,
        };
        let links = match &synced {
            Some(synced) => Some(&synced.links),
            None => links.as_ref(),
        };
        let mut object = json!({
            "node": hello.node_id,
            "address": address,
            "protocol_version": hello.protocol_version,
            "software_version": hello.software_version,
            "capabilities": hello.capabilities,
            "caller": {"id": hello.caller_id, "role": hello.caller_role},
            "certificates": certificates.iter().map(|c| certificate_json(c, now)).collect::<Vec<_>>(),
        });
        if let Some(map) = object.as_object_mut() {
            if let Some(links) = links {
                map.insert("links".into(), links.iter().map(link_json).collect());
            }
            if let Some(feeds) = &feeds {
                map.insert("feeds".into(), feeds.iter().map(feed_json).collect());
            }
            if let Some(limits) = &limits {
                map.insert("limits".into(), limits.iter().map(limit_json).collect());
            }
            if let Some(store) = &store {
                map.insert(
                    "store".into(),
                    json!({
                        "writable": store.unwritable.is_empty(),
                        "unwritable": store.unwritable,
                        "ledger_retention": {
                            "failing": !store.retention_error.is_empty(),
                            "error": store.retention_error,
                            "failing_since": optional_timestamp(store.retention_failing_since_unix_ms),
                            "failures": store.retention_failures,
                        },
                    }),
                );
            }
            if let Some(synced) = &synced {
                map.insert("caught_up".into(), synced.caught_up_json());
            }
        }
        print_json(&object)?;
        return synced.as_ref().map_or(Ok(()), Synced::check);
    }
    println!("node:             {}", hello.node_id);
    println!("address:          {address}");
    println!("protocol version: {}", hello.protocol_version);
    println!("software version: {}", hello.software_version);
    println!("capabilities:     {}", hello.capabilities.join(", "));
    println!(
        "you are:          {} ({})",
        hello.caller_id, hello.caller_role
    );
    for cert in &certificates {
        println!(
            "certificate:      {} {} (serial {}) {}",
            cert.role.as_str(),
            cert.name,
            cert.serial,
            cert.expiry_words(now)
        );
    }
    for cert in certificates
        .iter()
        .filter(|c| c.expires_within(now, EXPIRY_WARNING))
    {
        eprintln!(
            "warning: the {} certificate {} (serial {}) {}; {}",
            cert.role.as_str(),
            cert.name,
            cert.serial,
            cert.expiry_words(now),
            cert.advice()
        );
    }
    for cert in certificates.iter().filter(|c| c.revoked_by.is_some()) {
        eprintln!(
            "warning: the {} certificate {} (serial {}) is revoked by the CRL of {} in force: partners refuse this node; get a new certificate (entente certs renew --new-key at the CA), install it and restart",
            cert.role.as_str(),
            cert.name,
            cert.serial,
            cert.revoked_by.as_deref().unwrap_or("")
        );
    }
    if let Some(links) = &links {
        if links.is_empty() {
            println!("links:            none (no [[peer]] with role peer)");
        }
        for link in links {
            println!("{}", link_line(link, now));
        }
    }
    if let Some(store) = &store {
        if store.unwritable.is_empty() {
            println!("store:            writes");
        } else {
            println!(
                "store:            CANNOT WRITE (writes and deliveries refused): {}",
                store.unwritable
            );
        }
        if store.retention_error.is_empty() {
            if store.retention_failures > 0 {
                println!(
                    "ledger retention: works ({} failed attempts since start)",
                    store.retention_failures
                );
            }
        } else {
            println!(
                "ledger retention: FAILING since {} ({} failed attempts; segments kept, tried again every {}s; deliveries go on): {}",
                super::time::timestamp_seconds(store.retention_failing_since_unix_ms),
                store.retention_failures,
                crate::store::RETENTION_RETRY.as_secs(),
                store.retention_error
            );
        }
    }
    for feed in feeds.iter().flatten() {
        println!("{}", feed_line(feed, now));
    }
    for limit in limits.iter().flatten() {
        println!(
            "limit {:<24} {:>16}{}",
            limit.name,
            limit.value,
            if limit.counted {
                format!("   refused {} since start", limit.refused)
            } else {
                String::new()
            }
        );
    }
    if let Some(deadline) = options.wait {
        let synced = wait_for_sync(&client, deadline).await?;
        if synced.links.is_empty() {
            println!("no links to wait for (no [[peer]] with role peer)");
        }
        for done in &synced.done {
            println!(
                "{}: caught up; {} items received in {:.1}s ({:.0} items/s), {} rejected",
                done.peer,
                done.items,
                done.seconds,
                done.items as f64 / done.seconds.max(1e-9),
                done.rejected,
            );
        }
        synced.check()?;
    }
    Ok(())
}

/// The certificates whose expiry to report: for the operator, those the node depends on
/// (its own, its anchors, its partners' as they connected); otherwise the caller's own
/// certificate and trust anchors, read from its configuration. A node too old to report
/// them is treated as the latter.
async fn watched_certificates(
    config: &StatusConfig,
    client: &NodeClient,
    admin: bool,
) -> Result<Vec<WatchedCertificate>> {
    if admin {
        match client.certificates().await {
            Ok(answer) => {
                return Ok(answer
                    .certificates
                    .into_iter()
                    .map(|c| WatchedCertificate {
                        role: match c.role.as_str() {
                            "own" => CertificateRole::Own,
                            "trust anchor" => CertificateRole::TrustAnchor,
                            _ => CertificateRole::Partner,
                        },
                        name: c.name,
                        serial: c.serial,
                        not_after_ms: c.not_after_unix_ms,
                        last_seen_ms: (c.last_seen_unix_ms > 0).then_some(c.last_seen_unix_ms),
                        revoked_by: (!c.revoked_by.is_empty()).then_some(c.revoked_by),
                    })
                    .collect());
            }
            Err(crate::client::ClientError::Status {
                code: tonic::Code::Unimplemented,
                ..
            }) => {}
            Err(other) => return Err(other.into()),
        }
    }
    Ok(config.tls().watched_certificates())
}

fn certificate_json(cert: &WatchedCertificate, now: i64) -> serde_json::Value {
    json!({
        "role": cert.role.as_str(),
        "name": cert.name,
        "serial": cert.serial,
        "not_after": super::time::timestamp_seconds(cert.not_after_ms),
        "last_seen": cert.last_seen_ms.and_then(optional_timestamp),
        "expires_soon": cert.expires_within(now, EXPIRY_WARNING),
        "revoked_by": cert.revoked_by,
    })
}

/// The node to ask: the configured node (its listen address, loopback for an
/// unspecified one), a configured peer, or `ID@HOST:PORT`.
fn target(config: &Config, target: Option<String>) -> Result<(NodeId, String)> {
    Ok(match target {
        None => {
            let mut addr = config.node.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    IpAddr::from([127, 0, 0, 1])
                } else {
                    IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                });
            }
            (config.node.id.clone(), addr.to_string())
        }
        Some(target) => match target.split_once('@') {
            Some((id, address)) => (
                id.parse::<NodeId>().context("--node ID@HOST:PORT")?,
                address.to_owned(),
            ),
            None => {
                let id: NodeId = target
                    .parse()
                    .context("--node must be a peer id or ID@HOST:PORT")?;
                let peer =
                    config.peers.iter().find(|p| p.id == id).with_context(|| {
                        format!("{id} is not a configured peer; use ID@HOST:PORT")
                    })?;
                (id, peer.address.clone())
            }
        },
    })
}

fn ago(ms: i64, now: i64) -> String {
    if ms > 0 {
        format!("{:.0} s ago", (now - ms).max(0) as f64 / 1000.0)
    } else {
        "never".to_owned()
    }
}

fn link_line(link: &LinkStatus, now: i64) -> String {
    format!(
        "link {:<24} {} {} (behind for {:.1} s), items {} received / {} rejected, bundles {} / {}{}{}{}",
        link.peer,
        if link.connected {
            "connected   "
        } else {
            "disconnected"
        },
        if link.caught_up {
            "caught up  "
        } else {
            "catching up"
        },
        link.lag_ms as f64 / 1000.0,
        link.items_received,
        link.items_rejected,
        link.bundles_received,
        link.bundles_rejected,
        if link.bundles_held_back > 0 {
            format!(", {} held back to be pulled again", link.bundles_held_back)
        } else {
            String::new()
        },
        if link.last_message_unix_ms > 0 {
            format!(", last message {}", ago(link.last_message_unix_ms, now))
        } else {
            String::new()
        },
        if link.last_error.is_empty() {
            String::new()
        } else {
            format!("; last error: {}", link.last_error)
        },
    )
}

fn feed_line(feed: &FeedStatus, now: i64) -> String {
    format!(
        "feed {:<24} {} {} last poll {}, last success {}, items {} ingested / {} unchanged, objects {} fetched / {} skipped, polls {} ({} failed){}{}",
        feed.name,
        feed.kind,
        feed.url,
        ago(feed.last_poll_unix_ms, now),
        ago(feed.last_success_unix_ms, now),
        feed.items_ingested,
        feed.items_unchanged,
        feed.objects_fetched,
        feed.objects_skipped,
        feed.polls,
        feed.failures,
        if feed.checkpoint.is_empty() {
            String::new()
        } else {
            format!("; at {}", feed.checkpoint)
        },
        if feed.last_error.is_empty() {
            String::new()
        } else {
            format!("; last error: {}", feed.last_error)
        },
    )
}

/// A link in `status --json`.
fn link_json(link: &LinkStatus) -> serde_json::Value {
    json!({
        "peer": link.peer,
        "address": link.address,
        "connected": link.connected,
        "lag_ms": link.lag_ms,
        "caught_up": link.caught_up,
        "items_received": link.items_received,
        "items_rejected": link.items_rejected,
        "bundles_received": link.bundles_received,
        "bundles_rejected": link.bundles_rejected,
        "bundles_held_back": link.bundles_held_back,
        "last_message": optional_timestamp(link.last_message_unix_ms),
        "last_error": (!link.last_error.is_empty()).then_some(&link.last_error),
    })
}

/// A feed in `status --json`.
fn feed_json(feed: &FeedStatus) -> serde_json::Value {
    json!({
        "name": feed.name,
        "kind": feed.kind,
        "url": feed.url,
        "last_poll": optional_timestamp(feed.last_poll_unix_ms),
        "last_success": optional_timestamp(feed.last_success_unix_ms),
        "polls": feed.polls,
        "failures": feed.failures,
        "objects_fetched": feed.objects_fetched,
        "objects_skipped": feed.objects_skipped,
        "items_ingested": feed.items_ingested,
        "items_unchanged": feed.items_unchanged,
        "checkpoint": (!feed.checkpoint.is_empty()).then_some(&feed.checkpoint),
        "last_error": (!feed.last_error.is_empty()).then_some(&feed.last_error),
        "skip_reasons": feed.skip_reasons,
    })
}

/// A limit in `status --json`.
fn limit_json(limit: &LimitState) -> serde_json::Value {
    json!({
        "name": limit.name,
        "value": limit.value,
        "refused": limit.counted.then_some(limit.refused),
    })
}

/// One link once it caught up, as `status --wait` reports it.
struct CaughtUp {
    peer: String,
    items: u64,
    rejected: u64,
    seconds: f64,
}

/// What `wait_for_sync` saw: the links at the end, and those that caught up.
struct Synced {
    links: Vec<LinkStatus>,
    done: Vec<CaughtUp>,
    /// The deadline, and the links still behind, when it passed first.
    timed_out: Option<(Duration, String)>,
}

impl Synced {
    /// Fails when the deadline passed before every link caught up.
    fn check(&self) -> Result<()> {
        if let Some((limit, behind)) = &self.timed_out {
            bail!(
                "not caught up after {:.0}s: {behind} (see the links in `entente status`)",
                limit.as_secs_f64(),
            );
        }
        Ok(())
    }

    fn caught_up_json(&self) -> serde_json::Value {
        self.done
            .iter()
            .map(|d| {
                json!({
                    "peer": d.peer,
                    "items_received": d.items,
                    "items_rejected": d.rejected,
                    "seconds": (d.seconds * 1000.0).round() / 1000.0,
                })
            })
            .collect()
    }
}

/// `entente status --wait`: follows the node's replication links until each has pulled
/// its peer's whole change feed (a bar per link on a terminal; otherwise a line every
/// 10 s on stderr naming the links still behind). Links added or removed by a reload
/// meanwhile are followed, until every link caught up or `deadline` passed.
async fn wait_for_sync(client: &NodeClient, deadline: Option<Duration>) -> Result<Synced> {
    const REPORT_EVERY: Duration = Duration::from_secs(10);
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::with_draw_target(if terminal {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    });
    let style =
        ProgressStyle::with_template("{prefix:<24} [{bar:40}] {pos}/{len} feed entries, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    // Per link: its bar, the items it had received when first seen, when it caught up.
    let mut state: BTreeMap<String, (ProgressBar, u64, Option<f64>)> = BTreeMap::new();
    let mut last_report = Instant::now();
    let mut timed_out = None;
    let links = loop {
        let links = client.links().await?.links;
        let secs = started.elapsed().as_secs_f64();
        state.retain(|peer, (bar, _, _)| {
            let present = links.iter().any(|l| &l.peer == peer);
            if !present {
                bar.finish_and_clear();
            }
            present
        });
        for link in &links {
            let (bar, items_at_start, done) = state.entry(link.peer.clone()).or_insert_with(|| {
                // A peer's positions are sealed: the bar says caught up or not.
                let bar = bars.add(ProgressBar::new(1));
                bar.set_style(style.clone());
                bar.set_prefix(link.peer.clone());
                (bar, link.items_received, None)
            });
            bar.set_position(u64::from(link.caught_up));
            let items = link.items_received - (*items_at_start).min(link.items_received);
            bar.set_message(format!(
                "{items} items ({:.0}/s){}",
                items as f64 / secs.max(1e-9),
                if link.connected { "" } else { ", connecting" }
            ));
            if done.is_none() && link.caught_up {
                *done = Some(secs);
                bar.finish();
            }
        }
        let behind: Vec<&str> = state
            .iter()
            .filter(|(_, (_, _, done))| done.is_none())
            .map(|(peer, _)| peer.as_str())
            .collect();
        if behind.is_empty() {
            break links;
        }
        if !terminal && last_report.elapsed() >= REPORT_EVERY {
            eprintln!(
                "waiting {:.0}s for: {}",
                started.elapsed().as_secs_f64(),
                behind.join(", ")
            );
            last_report = Instant::now();
        }
        if let Some(limit) = deadline {
            if started.elapsed() >= limit {
                timed_out = Some((limit, behind.join(", ")));
                break links;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bars.clear().ok();
    let done = links
        .iter()
        .filter_map(|link| {
            let (_, items_at_start, Some(secs)) = state.get(&link.peer)? else {
                return None;
            };
            Some(CaughtUp {
                peer: link.peer.clone(),
                items: link.items_received - (*items_at_start).min(link.items_received),
                rejected: link.items_rejected,
                seconds: *secs,
            })
        })
        .collect();
    Ok(Synced {
        links,
        done,
        timed_out,
    })
}
