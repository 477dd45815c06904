//! `entente publish` and `entente revoke`: sending items for the node to sign.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::{Output, count, print_json, progress, read_input};
use crate::client::NodeClient;
use crate::config::ClientSettings;
use crate::crypto::MAX_ITEMS_PER_BUNDLE;
use crate::engine::now_ms;
use crate::interop::{self, Defaults, InputFormat};
use crate::model::{IndicatorType, NodeId, Tlp};
use crate::rpc::proto::{PublishRequest, PublishResponse};
use crate::wire;

/// Most input errors printed one by one; the rest are counted.
const MAX_ERRORS_SHOWN: usize = 1000;

/// Largest Publish message the CLI sends: a quarter of the node's default limit
/// (`limits.publish_message_bytes`), so a node configured lower still takes it.
const PUBLISH_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Options of `entente publish`.
pub struct PublishOptions {
    /// Marking for items whose input gives none.
    pub tlp: Option<Tlp>,
    /// Type for CSV rows and list lines that give none.
    pub indicator_type: Option<IndicatorType>,
    /// Tags added to every item.
    pub tags: Vec<String>,
    /// Signed `max_hops`.
    pub max_hops: Option<u32>,
    /// Signed recipient list.
    pub recipients: Vec<NodeId>,
    /// Sharing groups of the node, expanded into the recipient list by the node.
    pub groups: Vec<String>,
    /// Publish the valid items even when some are invalid.
    pub skip_invalid: bool,
    /// Input format; detected when `None`.
    pub format: Option<InputFormat>,
    /// Items per bundle.
    pub bundle_size: usize,
}

/// `entente publish`: parse INPUT, refuse it if anything is invalid (unless told to
/// skip), then stream it to the node as signed bundles. Fails (after printing the
/// summary) when the node refused any item, naming each with the reason.
pub async fn publish(
    settings: &ClientSettings,
    input: &Path,
    options: PublishOptions,
    output: Output,
) -> Result<()> {
    let text = read_input(input)?;
    let format = options.format.unwrap_or_else(|| InputFormat::detect(&text));
    let defaults = Defaults {
        tlp: options.tlp,
        indicator_type: options.indicator_type,
        tags: options.tags.clone(),
        origin: Some(settings.node_id.to_string()),
    };
    let parsed = interop::parse_input(format, &text, &defaults, now_ms());
    drop(text);
    let name = input.display();
    for error in parsed.errors.iter().take(MAX_ERRORS_SHOWN) {
        eprintln!("{name}: {error}");
    }
    if parsed.errors.len() > MAX_ERRORS_SHOWN {
        eprintln!(
            "{name}: ... and {} more invalid entries",
            parsed.errors.len() - MAX_ERRORS_SHOWN
        );
    }
    if !parsed.errors.is_empty() && !options.skip_invalid {
        bail!(
            "nothing published: {} invalid entries in {name} ({format}); fix them or pass --skip-invalid to publish the {} valid items",
            parsed.errors.len(),
            parsed.items.len()
        );
    }
    if parsed.items.is_empty() {
        bail!("nothing to publish: no items in {name}");
    }
    let bundle_size = options.bundle_size.clamp(1, MAX_ITEMS_PER_BUNDLE);
    let distribution = wire::Distribution {
        max_hops: options.max_hops,
        recipients: options.recipients.iter().map(|r| r.to_string()).collect(),
    };

    let client = NodeClient::connect_with(settings).await?;
    let total = parsed.items.len();
    let bar = progress(total as u64, "publishing");
    let started = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(4);
    let feeder_bar = bar.clone();
    let items = parsed.items;
    let groups = options.groups.clone();
    let feeder = tokio::spawn(async move {
        // A bundle closes at --bundle-size items or at PUBLISH_MESSAGE_BYTES, whichever
        // comes first, so that no message crosses the node's size limit.
        let mut pending: Vec<wire::Item> = Vec::new();
        let mut pending_bytes = 0usize;
        let mut next = items.first().map(wire::Item::from);
        for i in 0..items.len() {
            let Some(item) = next.take() else { break };
            pending_bytes += prost::Message::encoded_len(&item) + 4;
            pending.push(item);
            next = items.get(i + 1).map(wire::Item::from);
            let full = pending.len() >= bundle_size
                || next.as_ref().is_some_and(|next| {
                    pending_bytes + prost::Message::encoded_len(next) + 4 > PUBLISH_MESSAGE_BYTES
                });
            if full || next.is_none() {
                let sent = pending.len() as u64;
                let request = PublishRequest {
                    items: std::mem::take(&mut pending),
                    distribution: Some(distribution.clone()),
                    groups: groups.clone(),
                };
                pending_bytes = 0;
                if tx.send(request).await.is_err() {
                    return;
                }
                feeder_bar.inc(sent);
            }
        }
        // The bar counts items sent; the node answers once all of them are durable.
        feeder_bar.set_message("sent; waiting for the node to sign and flush");
    });
    let response = client
        .publish(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    feeder.abort();
    bar.finish_and_clear();
    let response = response?;
    let secs = started.elapsed().as_secs_f64();
    if output.is_json() {
        print_json(&json!({
            "node": client.node().as_str(),
            "items": total,
            "accepted": response.items_accepted,
            "duplicates": response.items_duplicate,
            "rejected": rejected_json(&response),
            "rejected_count": response.items_rejected,
            "invalid_skipped": parsed.errors.len(),
            "relisted": response.relisted,
            "relisted_count": response.items_relisted,
            "waiting": response
                .waiting
                .iter()
                .map(|w| json!({"id": w.id, "reason": w.reason}))
                .collect::<Vec<_>>(),
            "bundle_ids": response.bundle_ids,
            "seconds": (secs * 1000.0).round() / 1000.0,
        }))?;
    } else {
        println!(
            "published {} in {} to {} ({} duplicate, {} rejected) in {secs:.1}s ({:.0} items/s)",
            count(response.items_accepted, "item"),
            count(response.bundle_ids.len() as u64, "bundle"),
            client.node(),
            response.items_duplicate,
            response.items_rejected,
            total as f64 / secs.max(1e-9),
        );
        if !parsed.errors.is_empty() {
            println!(
                "skipped {} invalid {}",
                parsed.errors.len(),
                if parsed.errors.len() == 1 {
                    "entry"
                } else {
                    "entries"
                }
            );
        }
        for rejected in &response.rejected {
            eprintln!("rejected {}: {}", rejected.id, rejected.reason);
        }
        let unnamed = response
            .items_rejected
            .saturating_sub(response.rejected.len() as u64);
        if unnamed > 0 {
            eprintln!("... and {unnamed} more refused");
        }
        if response.items_relisted > 0 {
            eprintln!(
                "warning: {} revoked before {} live again (a later version undoes a revocation; to keep an indicator withdrawn, take it out of what you publish): {}{}",
                count(response.items_relisted, "indicator"),
                if response.items_relisted == 1 {
                    "is"
                } else {
                    "are"
                },
                response.relisted.join(", "),
                if response.items_relisted > response.relisted.len() as u64 {
                    ", ..."
                } else {
                    ""
                }
            );
        }
        for waiting in &response.waiting {
            eprintln!("warning: {} {}", waiting.id, waiting.reason);
        }
    }
    if response.items_rejected > 0 {
        bail!(
            "{} of {total} refused by {} (see above)",
            count(response.items_rejected, "item"),
            client.node()
        );
    }
    Ok(())
}

/// The `rejected` member of the publish JSON object: `[{"id", "reason"}]`, as many as the
/// node named (it names the first 1000; `rejected_count` has them all).
fn rejected_json(response: &PublishResponse) -> serde_json::Value {
    response
        .rejected
        .iter()
        .map(|r| json!({"id": r.id, "reason": r.reason}))
        .collect()
}

/// `entente revoke ID --reason TEXT`: publishes the revocation of an indicator or context
/// object this node originated. The node fills in its marking, type, tags and content
/// (for a context object, a new version of it with `revoked: true`).
pub async fn revoke(
    settings: &ClientSettings,
    id: &str,
    reason: &str,
    output: Output,
) -> Result<()> {
    let id = crate::model::ItemId::parse(id).context("the id to revoke")?;
    if reason.trim().is_empty() {
        bail!("--reason must say why the indicator is revoked");
    }
    let client = NodeClient::connect_with(settings).await?;
    let request = PublishRequest {
        items: vec![wire::Item {
            id: id.to_string(),
            modified_unix_ms: 0,
            tlp: wire::Tlp::Unspecified as i32,
            tags: Vec::new(),
            kind: Some(wire::item::Kind::Revocation(wire::Revocation {
                reason: reason.to_owned(),
                indicator_type: String::new(),
                indicator: None,
            })),
        }],
        distribution: Some(wire::Distribution::default()),
        groups: Vec::new(),
    };
    let response = client
        .publish(tokio_stream::iter(std::iter::once(request)))
        .await?;
    if response.items_accepted != 1 {
        if let Some(rejected) = response.rejected.first() {
            bail!("{id} was not revoked: {}", rejected.reason);
        }
        bail!(
            "{id} was not revoked ({} duplicate, {} rejected)",
            response.items_duplicate,
            response.items_rejected
        );
    }
    if output.is_json() {
        print_json(&json!({
            "id": id.to_string(),
            "node": client.node().as_str(),
            "reason": reason,
            "bundle_id": response.bundle_ids.first(),
        }))
    } else {
        println!("revoked {id} at {}: {reason}", client.node());
        Ok(())
    }
}
