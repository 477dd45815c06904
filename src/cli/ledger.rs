//! `entente ledger show` and `entente ledger verify`: the node's disclosure ledger,
//! read through its admin service.

use std::io::Write;

use anyhow::{Result, bail};
use serde_json::json;

use super::time::{optional_timestamp, timestamp, timestamp_seconds};
use super::{Output, count, hex, print_json};
use crate::client::NodeClient;
use crate::config::ClientSettings;
use crate::model::NodeId;

/// `entente ledger show`: records oldest first, a line (or JSON object) each.
pub async fn show(
    settings: &ClientSettings,
    partner: Option<NodeId>,
    since_ms: Option<i64>,
    output: Output,
) -> Result<()> {
    let client = NodeClient::connect_with(settings).await?;
    let mut stream = client
        .ledger_show(crate::rpc::proto::LedgerShowRequest {
            partner: partner.map(|p| p.to_string()).unwrap_or_default(),
            since_unix_ms: since_ms.unwrap_or(0),
        })
        .await?;
    let mut out = std::io::stdout().lock();
    while let Some(record) = stream.message().await.map_err(|s| client.stream_error(s))? {
        let items: usize = record.deliveries.iter().map(|d| d.indices.len()).sum();
        if output.is_json() {
            let value = json!({
                "seq": record.seq,
                "time": timestamp(record.time_unix_ms),
                "partner": record.partner,
                "path": record.path,
                "items": items,
                "deliveries": record.deliveries.iter().map(|d| json!({
                    "bundle_id": d.bundle_id, "indices": d.indices,
                })).collect::<Vec<_>>(),
                "policy_hash": hex(&record.policy_hash),
                "prev_hash": hex(&record.prev_hash),
                "hash": hex(&record.hash),
                "note": record.note,
            });
            writeln!(out, "{value}")?;
        } else {
            writeln!(
                out,
                "{:>8}  {}  {:<24} {:<9} {} in {}  policy {}",
                record.seq,
                timestamp_seconds(record.time_unix_ms),
                record.partner,
                record.path,
                count(items as u64, "item"),
                count(record.deliveries.len() as u64, "bundle"),
                &hex(&record.policy_hash)[..12.min(record.policy_hash.len() * 2)],
            )?;
            if !record.note.is_empty() {
                writeln!(out, "          {}", record.note)?;
            }
        }
    }
    Ok(())
}

/// `entente ledger verify`: fails, saying where, when the chain is broken (after
/// printing the JSON object, with `--json`).
pub async fn verify(settings: &ClientSettings, output: Output) -> Result<()> {
    let client = NodeClient::connect_with(settings).await?;
    let answer = client.ledger_verify().await?;
    if output.is_json() {
        print_json(&json!({
            "node": client.node().as_str(),
            "intact": answer.intact,
            "records": answer.records,
            "head": hex(&answer.head),
            "verified_from": answer.intact.then_some(answer.verified_from),
            "broken_at": (!answer.intact).then_some(answer.broken_at),
            "problem": (!answer.intact).then_some(&answer.problem),
            "restarted": (!answer.restarted.is_empty()).then(|| json!({
                "time": optional_timestamp(answer.restarted_unix_ms),
                "reason": answer.restarted,
            })),
        }))?;
    } else {
        if !answer.restarted.is_empty() {
            println!(
                "the ledger was restarted at {} and holds no history before then: {}",
                timestamp_seconds(answer.restarted_unix_ms),
                answer.restarted
            );
        }
        if answer.intact {
            if answer.verified_from > 0 {
                println!(
                    "verified from checkpoint {} (history before it dropped under retention)",
                    answer.verified_from
                );
            }
            println!(
                "ledger intact: {}, head {}",
                count(answer.records, "record"),
                hex(&answer.head)
            );
        }
    }
    if !answer.intact {
        bail!(
            "ledger broken at record {}: {}",
            answer.broken_at,
            answer.problem
        );
    }
    Ok(())
}
