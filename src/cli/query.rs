//! `entente query`, `get`, `subscribe` and `export`: reading what the node lets this
//! client see.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::item::{Shown, Table};
use super::{count, spinner};
use crate::client::NodeClient;
use crate::config::ClientSettings;
use crate::interop;
use crate::model::Tlp;
use crate::rpc::proto::ItemFilter;

/// Most distinct origins whose `identity` objects one export carries (a federation has
/// far fewer members; this only bounds what a misbehaving node could make a client hold).
const MAX_EXPORT_ORIGINS: usize = 10_000;

/// Items asked for per page of a query.
const PAGE_SIZE: u32 = 1000;

/// How items are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemOutput {
    /// An aligned table (`query`, `subscribe`) or details (`get`).
    Text,
    /// The item JSON object, one per line.
    Json,
    /// A STIX 2.1 indicator (or context object) with `x_entente_provenance`, one per line.
    Stix,
}

/// What `entente query` and `entente subscribe` select besides the node-side filter.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only items with one of these markings (all when empty).
    pub tlp: Vec<Tlp>,
}

impl Selection {
    fn admits(&self, shown: &Shown) -> bool {
        self.tlp.is_empty() || self.tlp.contains(&shown.item.tlp)
    }
}

/// One item as a line of STIX 2.1 JSON with the provenance in `x_entente_provenance`.
pub fn stix_line(shown: &Shown) -> String {
    let mut object = interop::to_stix(&shown.item);
    if let Some(map) = object.as_object_mut() {
        let p = &shown.provenance;
        map.insert(
            "x_entente_provenance".into(),
            serde_json::json!({
                "origin": p.origin,
                "bundle_id": p.bundle_id,
                "received_from": p.received_from,
                "hops": p.hops,
                "signature_verified": p.signature_verified,
            }),
        );
    }
    object.to_string()
}

/// `entente query`: every matching item the node lets this client see, page by page.
/// Text is a table whose columns fit the first page; the count goes to stderr.
pub async fn query(
    settings: &ClientSettings,
    filter: ItemFilter,
    selection: &Selection,
    output: ItemOutput,
    limit: Option<usize>,
) -> Result<()> {
    let client = NodeClient::connect_with(settings).await?;
    let limit = limit.unwrap_or(usize::MAX);
    let mut token = Vec::new();
    let mut shown = 0usize;
    let mut table: Option<Table> = None;
    let mut out = std::io::stdout().lock();
    'pages: while shown < limit {
        let page = client.query(filter.clone(), PAGE_SIZE, token).await?;
        let mut items = Vec::new();
        for stored in &page.items {
            let item = Shown::from_stored(stored)?;
            if selection.admits(&item) {
                items.push(item);
            }
        }
        items.truncate(limit - shown);
        match output {
            ItemOutput::Text => {
                let rows: Vec<[String; 8]> = items.iter().map(Shown::row).collect();
                if table.is_none() && !rows.is_empty() {
                    let fitted = Table::fitting(&rows);
                    writeln!(out, "{}", fitted.header().trim_end())?;
                    table = Some(fitted);
                }
                if let Some(table) = &table {
                    for row in &rows {
                        writeln!(out, "{}", table.line(row).trim_end())?;
                    }
                }
            }
            ItemOutput::Json => {
                for item in &items {
                    writeln!(out, "{}", item.to_json_line()?)?;
                }
            }
            ItemOutput::Stix => {
                for item in &items {
                    writeln!(out, "{}", stix_line(item))?;
                }
            }
        }
        shown += items.len();
        if page.next_page_token.is_empty() {
            break 'pages;
        }
        token = page.next_page_token;
    }
    out.flush()?;
    if output == ItemOutput::Text {
        drop(out);
        eprintln!("{}", count(shown as u64, "item"));
    }
    Ok(())
}

/// `entente get`: one item with its provenance.
pub async fn get(settings: &ClientSettings, id: &str, output: ItemOutput) -> Result<()> {
    let client = NodeClient::connect_with(settings).await?;
    let Some(stored) = client.get(id).await? else {
        bail!(
            "{id}: no such item on {} (or not visible to {})",
            client.node(),
            settings.id
        );
    };
    let shown = Shown::from_stored(&stored)?;
    let text = match output {
        ItemOutput::Text => shown.details(),
        ItemOutput::Json => shown.to_json_line()?,
        ItemOutput::Stix => stix_line(&shown),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

/// `entente subscribe`: print items as the node accepts them, until interrupted. Text
/// rows use fixed column widths (there is no first page to fit).
pub async fn subscribe(
    settings: &ClientSettings,
    filter: ItemFilter,
    selection: &Selection,
    output: ItemOutput,
) -> Result<()> {
    let client = NodeClient::connect_with(settings).await?;
    let mut stream = client.subscribe(filter).await?;
    let table = Table::fitting(std::iter::empty());
    let mut out = std::io::stdout().lock();
    if output == ItemOutput::Text {
        writeln!(out, "{}", table.header().trim_end())?;
        out.flush()?;
    }
    while let Some(stored) = stream.message().await.map_err(|s| client.stream_error(s))? {
        let shown = Shown::from_stored(&stored)?;
        if !selection.admits(&shown) {
            continue;
        }
        let line = match output {
            ItemOutput::Text => table.line(&shown.row()).trim_end().to_owned(),
            ItemOutput::Json => shown.to_json_line()?,
            ItemOutput::Stix => stix_line(&shown),
        };
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

/// `entente export`: a STIX 2.1 bundle of every item this client may see, written as it
/// streams in.
pub async fn export(
    settings: &ClientSettings,
    filter: ItemFilter,
    selection: &Selection,
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
    let mut exported = 0usize;
    let bar = spinner("exporting");
    let started = Instant::now();
    // The origins and markings the objects name, written after them as `identity` and
    // TLP 2.0 `marking-definition` objects so that the bundle is complete.
    let mut origins = std::collections::BTreeSet::new();
    let mut markings = std::collections::BTreeSet::new();
    let mut revocations = false;
    while let Some(chunk) = stream.message().await.map_err(|s| client.stream_error(s))? {
        let tlp = Tlp::try_from(chunk.tlp).ok();
        if !selection.tlp.is_empty() && !tlp.is_some_and(|tlp| selection.tlp.contains(&tlp)) {
            continue;
        }
        if exported > 0 {
            out.write_all(b",")?;
        }
        out.write_all(b"\n")?;
        out.write_all(chunk.stix_json.as_bytes())?;
        if !chunk.origin.is_empty() && origins.len() < MAX_EXPORT_ORIGINS {
            origins.insert(chunk.origin);
        }
        if let Some(tlp) = tlp {
            markings.insert(tlp);
        }
        revocations |= chunk.stix_json.contains("\"revoked\":true");
        exported += 1;
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
    for (written, object) in (exported..).zip(context) {
        out.write_all(if written > 0 { b",\n" } else { b"\n" })?;
        out.write_all(object.to_string().as_bytes())?;
    }
    out.write_all(b"\n]}\n")?;
    out.flush()?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "exported {} from {} in {secs:.1}s ({:.0} indicators/s)",
        count(exported as u64, "indicator"),
        client.node(),
        exported as f64 / secs.max(1e-9)
    );
    Ok(())
}
