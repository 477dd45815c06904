//! One stored item as the CLI prints it: the item JSON object (the schema the Python
//! client prints too, documented in the README), a row of the `query` table, or the
//! details `get` shows.

use anyhow::{Context, Result};
use serde::Serialize;

use super::time::{timestamp, timestamp_seconds};
use crate::model::{Item, ItemKind};
use crate::rpc::proto::StoredItem;

/// The item JSON object: `query`, `get` and `subscribe` print one per item, and so does
/// the Python client (`python -m entente_client ... --json`), field for field.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ItemJson {
    /// `indicator--<uuid>` (or `<type>--<uuid>` for a context object).
    pub id: String,
    /// `indicator`, `revocation` or `context`.
    pub kind: &'static str,
    /// The indicator type (`ipv4`, `domain`, `sha256`, ...) or the context object's STIX
    /// type (`malware`, `relationship`, ...).
    #[serde(rename = "type")]
    pub indicator_type: String,
    /// The normalised value; a context object's name (a relationship's type); `null`
    /// for a revocation.
    pub value: Option<String>,
    /// `CLEAR`, `GREEN`, `AMBER`, `AMBER+STRICT` or `RED`.
    pub tlp: &'static str,
    /// Tags, as published.
    pub tags: Vec<String>,
    /// The version: RFC 3339, UTC, milliseconds.
    pub modified: String,
    /// The indicator's description (empty when none).
    pub description: String,
    /// The indicator's confidence, 0 to 100.
    pub confidence: u8,
    /// The indicator's kill-chain phases.
    pub kill_chain_phases: Vec<String>,
    /// When the indicator became valid; `null` when not given.
    pub valid_from: Option<String>,
    /// When it stops being valid; `null` when open-ended.
    pub valid_until: Option<String>,
    /// Why it was revoked (revocations only; empty otherwise).
    pub revocation_reason: String,
    /// The ids a context object references (a relationship's source and target).
    pub refs: Vec<String>,
    /// Where the node got it from.
    pub provenance: ProvenanceJson,
}

/// The `provenance` member of the item JSON object.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ProvenanceJson {
    /// The node that signed the item.
    pub origin: String,
    /// The signed bundle it came in.
    pub bundle_id: String,
    /// The node that sent the bundle (the origin itself for its own items).
    pub received_from: String,
    /// Node-to-node transfers on the shortest path it arrived by.
    pub hops: u32,
    /// Whether the origin's signature and certificate chain verified on the node.
    pub signature_verified: bool,
}

/// An item the node sent, checked and converted to the model.
pub struct Shown {
    /// The item.
    pub item: Item,
    /// Its provenance.
    pub provenance: ProvenanceJson,
}

impl Shown {
    /// Converts what the node sent; fails on an item without content or an invalid one.
    pub fn from_stored(stored: &StoredItem) -> Result<Self> {
        let wire_item = stored
            .item
            .clone()
            .context("node sent an item without content")?;
        let item = Item::try_from(wire_item).context("node sent an invalid item")?;
        let p = stored.provenance.clone().unwrap_or_default();
        Ok(Self {
            item,
            provenance: ProvenanceJson {
                origin: p.origin,
                bundle_id: p.bundle_id,
                received_from: p.received_from,
                hops: p.hops,
                signature_verified: p.signature_verified,
            },
        })
    }

    /// The value column: the indicator's value, a context object's name, or nothing
    /// for a revocation.
    pub fn value(&self) -> Option<String> {
        match &self.item.kind {
            ItemKind::Indicator(i) => Some(i.value.clone()),
            ItemKind::Revocation(_) => None,
            ItemKind::Context(c) => Some(
                c.properties
                    .string("name")
                    .or_else(|| c.properties.string("relationship_type"))
                    .unwrap_or_default(),
            ),
        }
    }

    /// The item JSON object.
    pub fn to_json(&self) -> ItemJson {
        let item = &self.item;
        let mut json = ItemJson {
            id: item.id.to_string(),
            kind: match item.kind {
                ItemKind::Indicator(_) => "indicator",
                ItemKind::Revocation(_) => "revocation",
                ItemKind::Context(_) => "context",
            },
            indicator_type: item.indicator_type().as_str().to_owned(),
            value: self.value(),
            tlp: item.tlp.as_str(),
            tags: item.tags.clone(),
            modified: timestamp(item.modified_ms),
            description: String::new(),
            confidence: 0,
            kill_chain_phases: Vec::new(),
            valid_from: None,
            valid_until: None,
            revocation_reason: String::new(),
            refs: Vec::new(),
            provenance: self.provenance.clone(),
        };
        match &item.kind {
            ItemKind::Indicator(i) => {
                json.description = i.description.clone();
                json.confidence = i.confidence;
                json.kill_chain_phases = i.kill_chain_phases.clone();
                json.valid_from = (i.valid_from_ms != 0).then(|| timestamp(i.valid_from_ms));
                json.valid_until = i.valid_until_ms.map(timestamp);
            }
            ItemKind::Revocation(r) => json.revocation_reason = r.reason.clone(),
            ItemKind::Context(c) => json.refs = c.refs.iter().map(|r| r.to_string()).collect(),
        }
        json
    }

    /// The item JSON object as one line, keys sorted.
    pub fn to_json_line(&self) -> Result<String> {
        // Through `Value`, whose objects keep their keys sorted: the same bytes as the
        // Python client's `json.dumps(..., sort_keys=True)`.
        Ok(serde_json::to_value(self.to_json())?.to_string())
    }

    /// The cells of a `query` table row, in `Table::HEADER` order.
    pub fn row(&self) -> [String; 8] {
        let p = &self.provenance;
        [
            self.item.id.to_string(),
            self.item.indicator_type().as_str().to_owned(),
            self.item.tlp.as_str().to_owned(),
            p.origin.clone(),
            format!(
                "{}{}",
                p.hops,
                if p.signature_verified {
                    ""
                } else {
                    " UNVERIFIED"
                }
            ),
            timestamp_seconds(self.item.modified_ms),
            if self.item.tags.is_empty() {
                "-".to_owned()
            } else {
                self.item.tags.join(",")
            },
            self.value().unwrap_or_else(|| "(revoked)".to_owned()),
        ]
    }

    /// The `get` details, one `name: value` line each.
    pub fn details(&self) -> String {
        let item = &self.item;
        let p = &self.provenance;
        let mut rows: Vec<(&str, String)> = vec![
            ("id", item.id.to_string()),
            ("type", item.indicator_type().to_string()),
        ];
        match self.value() {
            Some(v) if !matches!(item.kind, ItemKind::Revocation(_)) => rows.push(("value", v)),
            _ => rows.push(("revoked", "yes".to_owned())),
        }
        rows.push(("marking", item.tlp.to_string()));
        rows.push(("tags", item.tags.join(", ")));
        rows.push(("modified", timestamp_seconds(item.modified_ms)));
        match &item.kind {
            ItemKind::Indicator(i) => {
                if let Some(until) = i.valid_until_ms {
                    rows.push(("valid until", timestamp_seconds(until)));
                }
                if !i.description.is_empty() {
                    rows.push(("description", i.description.clone()));
                }
            }
            ItemKind::Revocation(r) => rows.push(("reason", r.reason.clone())),
            ItemKind::Context(c) if !c.refs.is_empty() => rows.push((
                "refs",
                c.refs
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
            ItemKind::Context(_) => {}
        }
        rows.push(("origin", p.origin.clone()));
        rows.push(("bundle", p.bundle_id.clone()));
        rows.push((
            "received from",
            format!("{} ({} hops)", p.received_from, p.hops),
        ));
        rows.push((
            "signature",
            if p.signature_verified {
                "origin signature verified".to_owned()
            } else {
                "NOT VERIFIED".to_owned()
            },
        ));
        rows.iter()
            .map(|(name, value)| format!("{:<15}{value}", format!("{name}:")))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The text table `query` and `subscribe` print: left-aligned columns two spaces apart,
/// the value last (never padded, as URLs run long).
pub struct Table {
    widths: [usize; 7],
}

/// Widest a padded column grows; a longer cell pushes the rest of its row along.
const MAX_WIDTH: usize = 40;

impl Table {
    /// The column names.
    pub const HEADER: [&'static str; 8] = [
        "ID", "TYPE", "TLP", "ORIGIN", "HOPS", "MODIFIED", "TAGS", "VALUE",
    ];

    /// A table whose columns fit `rows` (and are at least as wide as a typical row).
    pub fn fitting<'a>(rows: impl IntoIterator<Item = &'a [String; 8]>) -> Self {
        let mut widths = [47, 12, 12, 16, 4, 20, 8];
        for (width, name) in widths.iter_mut().zip(Self::HEADER) {
            *width = (*width).max(name.len());
        }
        for row in rows {
            for (width, cell) in widths.iter_mut().zip(row.iter()) {
                *width = (*width).max(cell.chars().count().min(MAX_WIDTH));
            }
        }
        Self { widths }
    }

    /// The header line.
    pub fn header(&self) -> String {
        self.line(&Self::HEADER.map(str::to_owned))
    }

    /// One row as a line.
    pub fn line(&self, row: &[String; 8]) -> String {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(self.widths) {
            line.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count()) + 2;
            line.extend(std::iter::repeat_n(' ', pad));
        }
        line.push_str(&row[7]);
        line
    }
}
