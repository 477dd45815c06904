//! `entente store recover`: rebuilds a store whose metadata was lost from its bundle
//! log; `entente store compact`: compacts its bundle log. Both run in this process,
//! with the node stopped.

use anyhow::Result;
use serde_json::json;

use super::{Output, print_json};

/// `entente store recover`.
pub fn recover(config: &crate::Config, cut_damaged: bool, output: Output) -> Result<()> {
    let recovery = crate::store::recover::recover(
        &config.node.data_dir,
        &config.node.id,
        config.node.store_cache_bytes,
        cut_damaged,
    )
    .map_err(|e| match e {
        crate::store::StoreError::Engine { .. } => {
            anyhow::anyhow!("{e} (is the node still running? stop it before recovering its store)")
        }
        other => anyhow::Error::new(other),
    })?;
    if output.is_json() {
        return print_json(&json!({
            "frames": recovery.frames,
            "log_bytes": recovery.log_len,
            "feed_head": recovery.feed_head,
            "metadata_aside": recovery.metadata_aside.display().to_string(),
            "cut": recovery.cut.as_ref().map(|(damage, aside)| json!({
                "at": damage.at,
                "problem": damage.problem,
                "aside": aside.display().to_string(),
            })),
            "ledger_restarted": recovery.why,
            "dropped_notes": recovery.dropped_notes,
            "dropped_notes_problem": recovery.notes_problem,
        }));
    }
    println!("{recovery}");
    Ok(())
}

/// `entente store compact`.
pub fn compact(config: &crate::Config, output: Output) -> Result<()> {
    let running = |e: crate::store::StoreError| match e {
        crate::store::StoreError::Engine { .. } => anyhow::anyhow!(
            "{e} (is the node still running? it compacts its store itself every store.compact_every; stop it to compact now)"
        ),
        other => anyhow::Error::new(other),
    };
    let store = crate::store::SledStore::open_with(
        &config.node.data_dir,
        &config.node.id,
        config.node.store_cache_bytes,
        config.node.ledger.clone(),
    )
    .map_err(running)?;
    let done = store.compact(config.node.compaction)?;
    crate::store::ItemStore::flush(&store)?;
    if output.is_json() {
        return print_json(&json!({
            "bytes_before": done.bytes_before,
            "bytes_after": done.bytes_after,
            "bundles_before": done.bundles_before,
            "bundles_kept": done.bundles_kept,
            "records_before": done.records_before,
            "records_kept": done.records_kept,
            "expired_dropped": done.expired_dropped,
            "generation": done.generation,
            "seconds": done.took.as_secs_f64(),
            "writes_paused_seconds": done.writes_paused.as_secs_f64(),
        }));
    }
    println!("{done}");
    Ok(())
}
