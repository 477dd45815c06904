//! `entente store recover`: rebuilds a store whose metadata was lost from its bundle
//! log. Runs in this process, with the node stopped.

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
        }));
    }
    println!("{recovery}");
    Ok(())
}
