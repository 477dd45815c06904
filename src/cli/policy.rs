//! `entente policy check`, `explain` and `reload`: the sharing policy as the operator
//! sees it. Decisions come from `Policy::decide` (here or on the node), never from here.

use std::path::Path;

use anyhow::{Result, bail};
use serde_json::json;

use super::item::Shown;
use super::{Output, hex, print_json, read_input};
use crate::client::NodeClient;
use crate::config::ClientSettings;
use crate::engine::now_ms;
use crate::interop::{self, Defaults, InputFormat};
use crate::model::{Distribution, Item, ItemId, NodeId, Tlp};
use crate::policy::{Context, Held, HeldItem, Policy};

/// The feeds the node was configured with before (`feeds.known` in its data
/// directory, which a node that never started has not written), so that the policy
/// compiled here is the one the node puts in force. A damaged file is an error, as it
/// stops `serve`; one this account cannot read (the data directory belongs to the
/// node's account) leaves them out, and a warning says so.
pub fn known_feeds(config: &crate::Config) -> Result<Vec<crate::feeds::known::KnownFeed>> {
    use crate::feeds::known::ReadError;
    match crate::feeds::known::read_telling(&config.node.data_dir) {
        Ok(feeds) => Ok(feeds),
        Err(ReadError::Damaged(why)) => bail!("{why}; `entente serve` refuses to start on it"),
        Err(ReadError::Unreadable(why)) => {
            eprintln!(
                "warning: {why}; feeds taken out of the configuration are left out of the policy shown here, and its hash may differ from the node's"
            );
            Ok(Vec::new())
        }
    }
}

/// `entente policy check`: the compiled policy and its hash.
pub fn check(config: &crate::Config, output: Output) -> Result<()> {
    // What `serve` refuses to start with, said here too.
    crate::store::check_archive_dir(&config.node.ledger).map_err(anyhow::Error::msg)?;
    let policy = Policy::compile(&config.policy_spec_knowing(&known_feeds(config)?));
    let description = policy.describe();
    if output.is_json() {
        return print_json(&json!({
            "node": policy.node().as_str(),
            "policy_hash": hex(&policy.hash()),
            "rules": description.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>(),
        }));
    }
    print!("{description}");
    println!("\npolicy hash {}", hex(&policy.hash()));
    Ok(())
}

/// `entente policy explain --item ID`: the running node's decision for a stored item.
pub async fn explain_item(
    settings: &ClientSettings,
    partner: &NodeId,
    item: &str,
    output: Output,
) -> Result<()> {
    let client = NodeClient::connect_with(settings).await?;
    let answer = client.explain(partner.as_str(), item).await?;
    if output.is_json() {
        let value = answer
            .item
            .as_ref()
            .and_then(|stored| Shown::from_stored(stored).ok())
            .and_then(|shown| shown.value());
        return print_json(&decision_json(
            item,
            value.as_deref(),
            partner,
            answer.allow,
            &answer.rule,
        ));
    }
    println!("{item}: {}", answer.rule);
    Ok(())
}

/// One decision in `policy explain --json`.
fn decision_json(
    id: &str,
    value: Option<&str>,
    partner: &NodeId,
    allow: bool,
    rule: &str,
) -> serde_json::Value {
    json!({
        "id": id,
        "value": value,
        "partner": partner.as_str(),
        "allow": allow,
        "rule": rule,
    })
}

/// The items of an input file, as `policy explain --input` judges them.
struct InputHeld<'a> {
    items: &'a [Item],
    origin: &'a NodeId,
    distribution: &'a Distribution,
    now: i64,
}

impl Held for InputHeld<'_> {
    fn held(&self, id: &ItemId, _: bool) -> Option<HeldItem> {
        let uuid = id.uuid_bytes();
        let item = self
            .items
            .iter()
            .rev()
            .find(|item| item.id.uuid_bytes() == uuid)?;
        Some(HeldItem {
            item: item.clone(),
            origin: self.origin.clone(),
            hops: 0,
            distribution: Some(self.distribution.clone()),
            accepted_ms: self.now,
        })
    }
}

/// `entente policy explain --input`: each item of a file judged for `partner` as if this
/// node published it now, with the rule that decided (a JSON line each with `--json`).
pub fn explain_input(
    policy: &Policy,
    partner: &NodeId,
    input: &Path,
    tlp: Option<Tlp>,
    distribution: &Distribution,
    output: Output,
) -> Result<()> {
    let text = read_input(input)?;
    let parsed = interop::parse_input(
        InputFormat::detect(&text),
        &text,
        &Defaults {
            tlp,
            ..Defaults::default()
        },
        now_ms(),
    );
    for error in &parsed.errors {
        eprintln!("{}: {error}", input.display());
    }
    let now = now_ms();
    // Objects in the input that reference each other are judged together, as if the
    // node held the whole input.
    let held = InputHeld {
        items: &parsed.items,
        origin: policy.node(),
        distribution,
        now,
    };
    for item in &parsed.items {
        let decision = policy.decide(
            partner,
            item,
            &Context {
                origin: policy.node(),
                hops: 0,
                distribution: Some(distribution),
                accepted_ms: now,
                now_ms: now,
                latest: true,
                include_expired: false,
                held: &held,
            },
        );
        if output.is_json() {
            print_json(&decision_json(
                &item.id.to_string(),
                item.value(),
                partner,
                decision.allowed(),
                &decision.rule.to_string(),
            ))?;
        } else {
            let what = item.value().unwrap_or("(revocation)");
            println!("{} {what}: {}", item.id, decision.rule);
        }
    }
    Ok(())
}

/// `entente policy reload`: the running node re-reads its configuration.
pub async fn reload(settings: &ClientSettings, output: Output) -> Result<()> {
    let client = NodeClient::connect_with(settings).await?;
    let answer = client.reload_policy().await?;
    if output.is_json() {
        return print_json(&json!({
            "node": client.node().as_str(),
            "policy_hash": answer.policy_hash,
            "restart_needed": answer.restart_needed,
        }));
    }
    println!(
        "{} reloaded its policy (hash {})",
        client.node(),
        answer.policy_hash
    );
    if !answer.restart_needed.is_empty() {
        println!(
            "not in force until the node restarts (the values it started with stay in force): {}",
            answer.restart_needed.join(", ")
        );
    }
    Ok(())
}
