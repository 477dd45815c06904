//! What the client subcommands do once their arguments are parsed: read and check
//! input, talk to the node, print results. Progress goes to stderr (only on a
//! terminal), results to stdout.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::client::NodeClient;
use crate::config::ClientSettings;
use crate::crypto::MAX_ITEMS_PER_BUNDLE;
use crate::engine::now_ms;
use crate::interop::{self, Defaults, InputFormat, MAX_INPUT_BYTES};
use crate::model::{IndicatorType, Item, NodeId, Tlp};
use crate::rpc::proto::{ItemFilter, PublishRequest, StoredItem};
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

fn read_input(input: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    let limit = MAX_INPUT_BYTES as u64 + 1;
    if input == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut bytes)?;
    } else {
        std::fs::File::open(input)
            .with_context(|| format!("cannot open {}", input.display()))?
            .take(limit)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", input.display()))?;
    }
    if bytes.len() > MAX_INPUT_BYTES {
        bail!("{} is larger than {MAX_INPUT_BYTES} bytes", input.display());
    }
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", input.display()))
}

fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:40}}] {{pos}}/{{len}} ({{per_sec}}, eta {{eta}}) {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A counter for work of unknown length, on stderr when it is a terminal.
fn spinner(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template(&format!("{{spinner}} {what} {{pos}} ({{per_sec}})"))
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// `entente status --wait`: follows the node's replication links until each has pulled
/// its peer's whole change feed (a bar per link on a terminal; otherwise a line every
/// 10 s naming the links still behind), then prints one line per link with what it
/// received and the rate. Links added or removed by a reload meanwhile are followed.
pub async fn wait_for_sync(
    client: &NodeClient,
    deadline: Option<std::time::Duration>,
) -> Result<()> {
    use std::collections::BTreeMap;
    const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
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
                let bar = bars.add(ProgressBar::new(link.head.max(1)));
                bar.set_style(style.clone());
                bar.set_prefix(link.peer.clone());
                (bar, link.items_received, None)
            });
            bar.set_length(link.head.max(1));
            bar.set_position(link.cursor.min(link.head));
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
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    bars.clear().ok();
    if links.is_empty() {
        println!("no links to wait for (no [[peer]] with role peer)");
    }
    for link in links {
        let Some((_, items_at_start, Some(secs))) = state.get(&link.peer) else {
            continue;
        };
        let items = link.items_received - (*items_at_start).min(link.items_received);
        println!(
            "{}: caught up at {} of {} feed entries; {items} items received in {secs:.1}s ({:.0} items/s), {} rejected",
            link.peer,
            link.cursor,
            link.head,
            items as f64 / secs.max(1e-9),
            link.items_rejected,
        );
    }
    if let Some((limit, behind)) = timed_out {
        bail!(
            "not caught up after {:.0}s: {behind} (see the links in `entente status`)",
            limit.as_secs_f64(),
        );
    }
    Ok(())
}

/// `entente revoke ID --reason TEXT`: publishes the revocation of an indicator this node
/// originated. The node fills in the indicator's marking, type, tags and content.
pub async fn revoke(settings: &ClientSettings, id: &str, reason: &str) -> Result<()> {
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
        bail!(
            "{id} was not revoked ({} duplicates, {} rejected by the single-writer rule)",
            response.items_duplicate,
            response.items_rejected
        );
    }
    println!("revoked {id} at {}: {reason}", client.node());
    Ok(())
}

/// The items of an input file, as `policy explain --input` judges them.
struct InputHeld<'a> {
    items: &'a [Item],
    origin: &'a NodeId,
    distribution: &'a crate::model::Distribution,
    now: i64,
}

impl crate::policy::Held for InputHeld<'_> {
    fn held(&self, id: &crate::model::ItemId, _: bool) -> Option<crate::policy::HeldItem> {
        let item = self.items.iter().rev().find(|item| &item.id == id)?;
        Some(crate::policy::HeldItem {
            item: item.clone(),
            origin: self.origin.clone(),
            hops: 0,
            distribution: Some(self.distribution.clone()),
            accepted_ms: self.now,
        })
    }
}

/// Most distinct origins whose `identity` objects one export carries (a federation has
/// far fewer members; this only bounds what a misbehaving node could make a client hold).
const MAX_EXPORT_ORIGINS: usize = 10_000;

/// `entente publish`: parse INPUT, refuse it if anything is invalid (unless told to
/// skip), then stream it to the node as signed bundles.
pub async fn publish(
    settings: &ClientSettings,
    input: &Path,
    options: PublishOptions,
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
                let count = pending.len() as u64;
                let request = PublishRequest {
                    items: std::mem::take(&mut pending),
                    distribution: Some(distribution.clone()),
                    groups: groups.clone(),
                };
                pending_bytes = 0;
                if tx.send(request).await.is_err() {
                    return;
                }
                feeder_bar.inc(count);
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
    println!(
        "published {} items in {} bundles to {} ({} duplicates, {} rejected by the single-writer rule) in {secs:.1}s ({:.0} items/s)",
        response.items_accepted,
        response.bundle_ids.len(),
        client.node(),
        response.items_duplicate,
        response.items_rejected,
        total as f64 / secs.max(1e-9),
    );
    if !parsed.errors.is_empty() {
        println!("skipped {} invalid entries", parsed.errors.len());
    }
    Ok(())
}

/// Parses `--since`: RFC 3339, or a span back from now such as `90m`, `24h`, `7d`.
pub fn parse_since(text: &str) -> Result<i64> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0));
    }
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = digits
        .parse()
        .with_context(|| format!("--since {text:?}: expected RFC 3339 or e.g. 24h"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("--since {text:?}: unit must be s, m, h or d"),
    };
    Ok(now_ms() - n.saturating_mul(ms))
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// One stored item as a line of text or of JSON (a STIX 2.1 indicator object with
/// the provenance in `x_entente_provenance`).
pub fn render(stored: &StoredItem, json: bool) -> Result<String> {
    let wire_item = stored
        .item
        .clone()
        .context("node sent an item without content")?;
    let item = Item::try_from(wire_item).context("node sent an invalid item")?;
    let provenance = stored.provenance.clone().unwrap_or_default();
    if json {
        let mut object = interop::to_stix(&item);
        if let Some(map) = object.as_object_mut() {
            map.insert(
                "x_entente_provenance".into(),
                serde_json::json!({
                    "origin": provenance.origin,
                    "bundle_id": provenance.bundle_id,
                    "received_from": provenance.received_from,
                    "hops": provenance.hops,
                    "signature_verified": provenance.signature_verified,
                }),
            );
        }
        return Ok(object.to_string());
    }
    let what = match &item.kind {
        crate::model::ItemKind::Indicator(i) => {
            format!("{:<12} {}", item.indicator_type().as_str(), i.value)
        }
        crate::model::ItemKind::Revocation(_) => {
            format!("{:<12} (revoked)", item.indicator_type().as_str())
        }
        crate::model::ItemKind::Context(c) => format!(
            "{:<12} {}",
            item.indicator_type().as_str(),
            c.properties
                .string("name")
                .or_else(|| c.properties.string("relationship_type"))
                .unwrap_or_default()
        ),
    };
    Ok(format!(
        "{}  {what}  {}  origin={} hops={} modified={}{}",
        item.id,
        item.tlp,
        provenance.origin,
        provenance.hops,
        rfc3339(item.modified_ms),
        if provenance.signature_verified {
            ""
        } else {
            " UNVERIFIED"
        },
    ))
}

/// `entente query`: every matching item the node lets this client see, page by page.
pub async fn query(
    settings: &ClientSettings,
    filter: ItemFilter,
    json: bool,
    limit: usize,
) -> Result<()> {
    let client = NodeClient::connect_with(settings).await?;
    let mut token = Vec::new();
    let mut shown = 0usize;
    let mut out = std::io::stdout().lock();
    loop {
        let page = client.query(filter.clone(), 1000, token).await?;
        for stored in &page.items {
            if shown >= limit {
                return Ok(());
            }
            writeln!(out, "{}", render(stored, json)?)?;
            shown += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if !json {
        drop(out);
        eprintln!("{shown} items");
    }
    Ok(())
}

/// `entente get`: one item with its provenance.
pub async fn get(settings: &ClientSettings, id: &str, json: bool) -> Result<()> {
    let client = NodeClient::connect_with(settings).await?;
    let Some(stored) = client.get(id).await? else {
        bail!(
            "{id}: no such item on {} (or not visible to {})",
            client.node(),
            settings.id
        );
    };
    if json {
        println!("{}", render(&stored, true)?);
        return Ok(());
    }
    let item = Item::try_from(
        stored
            .item
            .clone()
            .context("node sent an item without content")?,
    )?;
    let p = stored.provenance.clone().unwrap_or_default();
    println!("id:            {}", item.id);
    println!("type:          {}", item.indicator_type());
    match item.value() {
        Some(v) => println!("value:         {v}"),
        None => println!("revoked:       yes"),
    }
    println!("marking:       {}", item.tlp);
    println!("tags:          {}", item.tags.join(", "));
    println!("modified:      {}", rfc3339(item.modified_ms));
    if let crate::model::ItemKind::Indicator(i) = &item.kind {
        if let Some(until) = i.valid_until_ms {
            println!("valid until:   {}", rfc3339(until));
        }
        if !i.description.is_empty() {
            println!("description:   {}", i.description);
        }
    }
    println!("origin:        {}", p.origin);
    println!("bundle:        {}", p.bundle_id);
    println!("received from: {} ({} hops)", p.received_from, p.hops);
    println!(
        "signature:     {}",
        if p.signature_verified {
            "origin signature verified"
        } else {
            "NOT VERIFIED"
        }
    );
    Ok(())
}

/// `entente subscribe`: print items as the node accepts them, until interrupted.
pub async fn subscribe(settings: &ClientSettings, filter: ItemFilter, json: bool) -> Result<()> {
    let client = NodeClient::connect_with(settings).await?;
    let mut stream = client.subscribe(filter).await?;
    let mut out = std::io::stdout().lock();
    while let Some(stored) = stream.message().await.map_err(|s| client.stream_error(s))? {
        writeln!(out, "{}", render(&stored, json)?)?;
        out.flush()?;
    }
    Ok(())
}

/// `entente policy explain --input`: each item of a file judged for `partner` as if this
/// node published it now, with the rule that decided.
pub fn explain_input(
    policy: &crate::policy::Policy,
    partner: &NodeId,
    input: &Path,
    tlp: Option<Tlp>,
    distribution: &crate::model::Distribution,
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
            &crate::policy::Context {
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
        let what = item.value().unwrap_or("(revocation)");
        println!("{} {what}: {}", item.id, decision.rule);
    }
    Ok(())
}

/// `entente ledger show`.
pub async fn ledger_show(
    settings: &ClientSettings,
    partner: Option<NodeId>,
    since_ms: Option<i64>,
    json: bool,
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
        if json {
            let value = serde_json::json!({
                "seq": record.seq,
                "time": rfc3339(record.time_unix_ms),
                "partner": record.partner,
                "path": record.path,
                "deliveries": record.deliveries.iter().map(|d| serde_json::json!({
                    "bundle_id": d.bundle_id, "indices": d.indices,
                })).collect::<Vec<_>>(),
                "policy_hash": hex(&record.policy_hash),
                "hash": hex(&record.hash),
                "note": record.note,
            });
            writeln!(out, "{value}")?;
        } else {
            writeln!(
                out,
                "{:>8}  {}  {:<24} {:<9} {} items in {} bundles  policy {}",
                record.seq,
                rfc3339(record.time_unix_ms),
                record.partner,
                record.path,
                items,
                record.deliveries.len(),
                &hex(&record.policy_hash)[..12.min(record.policy_hash.len() * 2)],
            )?;
            if !record.note.is_empty() {
                writeln!(out, "          {}", record.note)?;
            }
        }
    }
    Ok(())
}

/// `entente store recover`: rebuilds a store whose metadata was lost from its bundle
/// log (the node must be stopped).
pub fn store_recover(config: &crate::Config, cut_damaged: bool) -> Result<()> {
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
    println!("{recovery}");
    Ok(())
}

/// `entente ledger verify`: fails, saying where, when the chain is broken.
pub async fn ledger_verify(settings: &ClientSettings) -> Result<()> {
    let client = NodeClient::connect_with(settings).await?;
    let answer = client.ledger_verify().await?;
    if !answer.restarted.is_empty() {
        println!(
            "the ledger was restarted at {} and holds no history before then: {}",
            rfc3339(answer.restarted_unix_ms),
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
            "ledger intact: {} records, head {}",
            answer.records,
            hex(&answer.head)
        );
        Ok(())
    } else {
        bail!(
            "ledger broken at record {}: {}",
            answer.broken_at,
            answer.problem
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `entente export`: a STIX 2.1 bundle of every item this client may see, written as it
/// streams in.
pub async fn export(
    settings: &ClientSettings,
    filter: ItemFilter,
    output: Option<&Path>,
) -> Result<()> {
    let client = NodeClient::connect_with(settings).await?;
    let mut stream = client.export(filter).await?;
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    write!(
        out,
        "{{\"type\":\"bundle\",\"id\":\"bundle--{}\",\"objects\":[",
        uuid::Uuid::new_v4()
    )?;
    let mut count = 0usize;
    let bar = spinner("exporting");
    let started = Instant::now();
    // The origins and markings the objects name, written after them as `identity` and
    // TLP 2.0 `marking-definition` objects so that the bundle is complete.
    let mut origins = std::collections::BTreeSet::new();
    let mut markings = std::collections::BTreeSet::new();
    let mut revocations = false;
    while let Some(chunk) = stream.message().await.map_err(|s| client.stream_error(s))? {
        if count > 0 {
            out.write_all(b",")?;
        }
        out.write_all(b"\n")?;
        out.write_all(chunk.stix_json.as_bytes())?;
        if !chunk.origin.is_empty() && origins.len() < MAX_EXPORT_ORIGINS {
            origins.insert(chunk.origin);
        }
        if let Ok(tlp) = Tlp::try_from(chunk.tlp) {
            markings.insert(tlp);
        }
        revocations |= chunk.stix_json.contains("\"revoked\":true");
        count += 1;
        bar.inc(1);
    }
    let context = markings
        .into_iter()
        .map(interop::tlp_marking_definition)
        .chain(origins.iter().map(|origin| interop::identity(origin)))
        .chain(
            revocations
                .then(interop::revocation_extension)
                .into_iter()
                .flatten(),
        );
    for (written, object) in (count..).zip(context) {
        out.write_all(if written > 0 { b",\n" } else { b"\n" })?;
        out.write_all(object.to_string().as_bytes())?;
    }
    out.write_all(b"\n]}\n")?;
    out.flush()?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "exported {count} indicators from {} in {secs:.1}s ({:.0} indicators/s)",
        client.node(),
        count as f64 / secs.max(1e-9)
    );
    Ok(())
}
