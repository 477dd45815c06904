//! STIX 2.1 (and CSV / plain list) mapping: operator input files to items, items to
//! STIX 2.1 objects. No I/O here: callers pass text and get items and positioned errors.
//!
//! Every item returned has passed [`Item::validate`]. A bad object or line becomes an
//! [`InputError`] naming its position, and parsing goes on with the next one. Nothing is
//! marked silently: an item without a TLP marking in the input takes [`Defaults::tlp`], and
//! without that it is an error.

mod csv_input;
mod list_input;
mod pattern;
mod stix;
pub mod strict_json;

use std::collections::HashSet;
use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::model::{IndicatorType, Item, ItemId, ItemKind, Tlp};

pub use stix::{
    REVOCATION_EXTENSION, created_of, identity, identity_id, revocation_extension,
    revoked_context_properties, tlp_marking_definition, tlp2_marking, to_stix, to_stix_from,
    uses_revocation_extension, write_stix_from,
};

/// Most objects (STIX) or records (CSV, list) in one input; above it the input is refused
/// with a single error and no items.
pub const MAX_INPUT_ITEMS: usize = 5_000_000;

/// Largest input accepted, in bytes (512 MiB).
pub const MAX_INPUT_BYTES: usize = 512 * 1024 * 1024;

/// The format of an operator's input file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputFormat {
    /// A STIX 2.1 bundle (JSON).
    Stix,
    /// CSV with the columns `type,value,tlp,tags,valid_until` (the last three optional).
    Csv,
    /// One value per line; blank lines and `#` comments are skipped.
    List,
}

impl InputFormat {
    /// Guesses the format: JSON (first non-blank character `{`) is STIX; a first line (not
    /// blank, not a `#` comment) with a comma is CSV, unless the text before that comma is a
    /// URL or a STIX pattern (values that may contain commas); anything else is a list.
    pub fn detect(text: &str) -> InputFormat {
        let text = text.trim_start_matches('\u{feff}');
        if text.trim_start().starts_with('{') {
            return InputFormat::Stix;
        }
        let first = text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'));
        match first.and_then(|line| line.split_once(',')) {
            Some((head, _)) if !head.contains("://") && !head.trim_start().starts_with('[') => {
                InputFormat::Csv
            }
            _ => InputFormat::List,
        }
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InputFormat::Stix => "stix",
            InputFormat::Csv => "csv",
            InputFormat::List => "list",
        })
    }
}

/// What applies where the input says nothing (usually from command-line options).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Defaults {
    /// Marking for items whose input gives none (`--tlp`).
    pub tlp: Option<Tlp>,
    /// Type for CSV rows and list lines that give none (`--type`); without it the type is
    /// detected from the value.
    pub indicator_type: Option<IndicatorType>,
    /// Tags added to every item (`--tag`).
    pub tags: Vec<String>,
    /// The node that will publish the items. An item whose input gives no id (CSV rows,
    /// list lines) gets the id derived from it, its type and its value
    /// ([`ItemId::derived`]), so publishing the same list again updates the same items;
    /// without it such an item gets a random id.
    pub origin: Option<String>,
}

/// One object or line of the input that did not become an item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{position}: {reason}")]
pub struct InputError {
    /// Where: `line 12`, `objects[4] (indicator--…)` or `input` for the whole text.
    pub position: String,
    /// Why.
    pub reason: String,
}

/// The result of parsing an input: the valid items and an error per rejected object or line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedInput {
    /// Valid items, in input order.
    pub items: Vec<Item>,
    /// Rejected objects and lines, in input order.
    pub errors: Vec<InputError>,
}

/// What a TAXII status repeats of one object of an envelope (see [`parse_envelope`]):
/// its id (empty when it has none), version and type, cut to a bounded length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvelopeEntry {
    /// `id`, or empty when the object has no string id.
    pub id: String,
    /// `modified`, when it is a string.
    pub version: Option<String>,
    /// `modified` in ms since the epoch, as the import reads it, when it reads.
    pub version_ms: Option<i64>,
    /// `type`, when it is a string.
    pub kind: Option<String>,
}

/// Why an envelope was not read at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON this node reads: malformed, a name given twice, or more values than
    /// allowed.
    #[error("the body is not JSON that this node reads: {0}")]
    Json(String),
    /// JSON, but not an object with an `objects` array.
    #[error("the body is not a TAXII envelope with an objects array")]
    NotAnEnvelope,
    /// No objects, or more than allowed.
    #[error("an envelope holds at least one object and at most the limit")]
    ObjectCount,
}

/// Reads a TAXII 2.1 envelope's objects as [`parse_input`] reads a STIX bundle's,
/// straight from the request body: at most `max_values` JSON values (each scalar, array
/// and object counts one) and `max_objects` objects, a name given twice at any depth
/// refused. Returns the items and errors, and for each object of the envelope, in order,
/// what its status names.
pub fn parse_envelope(
    bytes: &[u8],
    max_values: usize,
    max_objects: usize,
    defaults: &Defaults,
    now_ms: i64,
) -> Result<(ParsedInput, Vec<EnvelopeEntry>), EnvelopeError> {
    let mut sink = Sink::new(defaults, max_objects, Conflicts::RefuseInput);
    let entries = stix::parse_envelope(bytes, max_values, max_objects, now_ms, &mut sink)?;
    Ok((sink.out, entries))
}

/// Parses operator input in `format` into items. `now_ms` (milliseconds since the Unix
/// epoch) is the version and start of validity of items whose input gives none.
pub fn parse_input(
    format: InputFormat,
    text: &str,
    defaults: &Defaults,
    now_ms: i64,
) -> ParsedInput {
    parse_with_limit(format, text, defaults, now_ms, MAX_INPUT_ITEMS)
}

/// Parses the objects of one page of a TAXII feed, as a STIX bundle `text`, the way
/// [`parse_input`] parses a file, but for one difference: objects that give one
/// indicator id different values are refused each (an error per object) and the rest
/// of the page is taken, rather than the whole input being refused. A page that cannot
/// be read at all (not a bundle, too many objects) is an `Err`, never a page of errors:
/// the feed must not count such a page as read.
pub fn parse_feed_page(
    text: &str,
    defaults: &Defaults,
    now_ms: i64,
) -> Result<ParsedInput, InputError> {
    let mut sink = Sink::new(defaults, MAX_INPUT_ITEMS, Conflicts::RefuseObjects);
    let outcome = parse_into(InputFormat::Stix, text, now_ms, &mut sink);
    match (outcome, sink.refused) {
        (Ok(()), None) => Ok(sink.out),
        (Ok(()), Some(whole)) | (Err(whole), _) => Err(whole),
    }
}

fn parse_with_limit(
    format: InputFormat,
    text: &str,
    defaults: &Defaults,
    now_ms: i64,
    max_items: usize,
) -> ParsedInput {
    let mut sink = Sink::new(defaults, max_items, Conflicts::RefuseInput);
    match parse_into(format, text, now_ms, &mut sink) {
        Ok(()) => sink.out,
        Err(whole) => ParsedInput {
            items: Vec::new(),
            errors: vec![whole],
        },
    }
}

/// Parses `text` into `sink`; `Err` when the whole input is refused before any of it is
/// read (too large, too many records).
fn parse_into(
    format: InputFormat,
    text: &str,
    now_ms: i64,
    sink: &mut Sink<'_>,
) -> Result<(), InputError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(InputError {
            position: "input".into(),
            reason: format!(
                "input is {} bytes, more than the limit of {MAX_INPUT_BYTES} bytes (512 MiB)",
                text.len()
            ),
        });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let outcome = match format {
        InputFormat::Stix => stix::parse(text, now_ms, sink),
        InputFormat::Csv => csv_input::parse(text, now_ms, sink),
        InputFormat::List => list_input::parse(text, now_ms, sink),
    };
    outcome.map_err(|TooMany| InputError {
        position: "input".into(),
        reason: format!(
            "more than {} objects or lines; split the input",
            sink.max_items
        ),
    })
}

/// The input has more records than allowed.
struct TooMany;

/// What one object or line says, before defaults apply.
struct Draft {
    /// The id given in the input, if any.
    id: Option<ItemId>,
    /// The version.
    modified_ms: i64,
    /// The marking given in the input, if any.
    tlp: Option<Tlp>,
    /// The lowest marking the item may have whatever `tlp` or the default says: the most
    /// restrictive marking that applies to only some of its fields (STIX granular markings).
    floor: Option<Tlp>,
    /// Tags given in the input.
    tags: Vec<String>,
    /// The indicator or revocation.
    kind: ItemKind,
}

/// What one indicator id given two different values in one input refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conflicts {
    /// The whole input (a file an operator publishes, a TAXII POST): which value is
    /// meant cannot be told, and the operator can correct the input.
    RefuseInput,
    /// The objects giving that id, each (a feed's page): the rest of the page is taken.
    RefuseObjects,
}

/// Collects items and errors, applies defaults and validation, and counts records.
struct Sink<'a> {
    out: ParsedInput,
    defaults: &'a Defaults,
    records: usize,
    max_items: usize,
    conflicts: Conflicts,
    /// Set when the whole input is refused (its one error, also in `out.errors`).
    refused: Option<InputError>,
}

impl<'a> Sink<'a> {
    fn new(defaults: &'a Defaults, max_items: usize, conflicts: Conflicts) -> Self {
        Sink {
            out: ParsedInput::default(),
            defaults,
            records: 0,
            max_items,
            conflicts,
            refused: None,
        }
    }

    /// Refuses the whole input: no item of it is kept, and `reason` at `position` is
    /// its one error.
    fn refuse_input(&mut self, position: String, reason: String) {
        let error = InputError { position, reason };
        self.out = ParsedInput {
            items: Vec::new(),
            errors: vec![error.clone()],
        };
        self.refused = Some(error);
    }

    /// Counts one record (object or line), failing once there are too many.
    fn count(&mut self) -> Result<(), TooMany> {
        self.records += 1;
        if self.records > self.max_items {
            return Err(TooMany);
        }
        Ok(())
    }

    /// Records the outcome for one object or line; `position` is only built for errors.
    fn take(&mut self, position: impl FnOnce() -> String, draft: Result<Draft, String>) {
        match draft.and_then(|draft| self.finish(draft)) {
            Ok(item) => self.out.items.push(item),
            Err(reason) => self.error(position(), reason),
        }
    }

    fn error(&mut self, position: String, reason: String) {
        self.out.errors.push(InputError { position, reason });
    }

    fn finish(&self, draft: Draft) -> Result<Item, String> {
        let tlp = draft
            .tlp
            .or(self.defaults.tlp)
            .ok_or("no TLP marking (give one in the input or with --tlp)")?
            .max(draft.floor.unwrap_or(Tlp::Clear));
        let tags = tags_from_labels(draft.tags, &self.defaults.tags)?;
        let item = Item {
            id: match (draft.id, &self.defaults.origin, &draft.kind) {
                (Some(id), _, _) => id,
                (None, Some(origin), ItemKind::Indicator(indicator)) => {
                    ItemId::derived(origin, indicator.indicator_type, &indicator.value)
                }
                (None, _, _) => ItemId::new_random(),
            },
            modified_ms: draft.modified_ms,
            tlp,
            tags,
            kind: draft.kind,
        };
        item.validate().map_err(|e| e.to_string())?;
        crate::model::pattern_syntax::check_item_pattern(&item).map_err(|e| e.to_string())?;
        Ok(item)
    }
}

/// An item's tags from the labels its input gives (STIX `labels`, a CSV row's tags, a
/// MISP event's and attribute's tags) and the tags added to every item after them
/// (`--tag`, a feed's `source:<name>` and `tags`): each once, in order, as given (tags
/// compare without regard to ASCII case). Nothing is changed or dropped to make a label
/// fit: one that breaks the tag rules (plain ASCII without whitespace, 1 to 64 bytes, at
/// most 32 in all) is an error naming it, and the object is refused.
pub fn tags_from_labels(labels: Vec<String>, added: &[String]) -> Result<Vec<String>, String> {
    let mut tags = labels;
    tags.extend(added.iter().cloned());
    let mut seen = HashSet::with_capacity(tags.len());
    tags.retain(|tag| seen.insert(tag.clone()));
    crate::model::check_tags(&tags).map_err(|e| e.to_string())?;
    Ok(tags)
}

/// The indicator type for a CSV row or list line that gives none.
fn default_type(defaults: &Defaults, value: &str) -> Result<IndicatorType, String> {
    defaults
        .indicator_type
        .or_else(|| crate::model::detect_type(value))
        .ok_or_else(|| "cannot tell the indicator type; give --type".to_owned())
}

/// Parses an RFC 3339 timestamp into milliseconds since the Unix epoch.
fn parse_timestamp(text: &str) -> Result<i64, String> {
    let shown = || text.chars().take(64).collect::<String>();
    let at = OffsetDateTime::parse(text.trim(), &Rfc3339)
        .map_err(|e| format!("{:?} is not an RFC 3339 timestamp ({e})", shown()))?;
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| format!("{:?} is out of range", shown()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Indicator, Revocation};

    pub(super) const NOW: i64 = 1_750_000_000_000;

    pub(super) fn defaults(tlp: Option<Tlp>) -> Defaults {
        Defaults {
            tlp,
            indicator_type: None,
            tags: Vec::new(),
            origin: None,
        }
    }

    pub(super) fn indicator(item: &Item) -> &Indicator {
        match &item.kind {
            ItemKind::Indicator(i) => i,
            other => panic!("expected an indicator, got {other:?}"),
        }
    }

    pub(super) fn revocation(item: &Item) -> &Revocation {
        match &item.kind {
            ItemKind::Revocation(r) => r,
            other => panic!("expected a revocation, got {other:?}"),
        }
    }

    /// (type, value) of every item.
    pub(super) fn values(parsed: &ParsedInput) -> Vec<(IndicatorType, String)> {
        parsed
            .items
            .iter()
            .map(|item| (item.indicator_type(), item.value().unwrap_or("").to_owned()))
            .collect()
    }

    pub(super) fn positions(parsed: &ParsedInput) -> Vec<&str> {
        parsed.errors.iter().map(|e| e.position.as_str()).collect()
    }

    #[test]
    fn detects_formats() {
        let cases = [
            ("{\"type\": \"bundle\"}", InputFormat::Stix),
            ("\u{feff}  \n {\"type\": \"bundle\"}", InputFormat::Stix),
            ("type,value,tlp\nipv4,1.2.3.4,green", InputFormat::Csv),
            ("ipv4,1.2.3.4", InputFormat::Csv),
            (",1.2.3.4,green", InputFormat::Csv),
            ("# exported list, 2025\n\nipv4,1.2.3.4", InputFormat::Csv),
            ("1.2.3.4\nexample.com", InputFormat::List),
            ("# a comment, with a comma\n1.2.3.4", InputFormat::List),
            ("http://x.example/a?b=1,2\n", InputFormat::List),
            ("[x:y IN ('a', 'b')]", InputFormat::List),
            ("", InputFormat::List),
        ];
        for (text, format) in cases {
            assert_eq!(InputFormat::detect(text), format, "{text:?}");
        }
    }

    #[test]
    fn input_error_displays_position_first() {
        let e = InputError {
            position: "line 3".into(),
            reason: "empty".into(),
        };
        assert_eq!(e.to_string(), "line 3: empty");
    }

    #[test]
    fn too_many_records_gives_one_error_and_no_items() {
        let text = "1.2.3.4\n1.2.3.5\n1.2.3.6\n";
        let d = defaults(Some(Tlp::Green));
        let parsed = parse_with_limit(InputFormat::List, text, &d, NOW, 3);
        assert_eq!(parsed.items.len(), 3);
        let parsed = parse_with_limit(InputFormat::List, text, &d, NOW, 2);
        assert!(parsed.items.is_empty());
        assert_eq!(positions(&parsed), ["input"]);
        assert!(parsed.errors[0].reason.contains("more than 2"));
        let csv = "ipv4,1.2.3.4\nipv4,1.2.3.5\nipv4,1.2.3.6\n";
        let parsed = parse_with_limit(InputFormat::Csv, csv, &d, NOW, 2);
        assert!(parsed.items.is_empty());
        assert_eq!(parsed.errors.len(), 1);
    }

    #[test]
    fn tags_from_defaults_are_added_once() {
        let d = Defaults {
            tlp: Some(Tlp::Amber),
            indicator_type: None,
            tags: vec!["source:honeypot".into(), "pii".into()],
            origin: None,
        };
        let parsed = parse_input(InputFormat::Csv, "ipv4,1.2.3.4,,pii;campaign-x\n", &d, NOW);
        assert_eq!(parsed.errors, []);
        assert_eq!(
            parsed.items[0].tags,
            ["pii", "campaign-x", "source:honeypot"]
        );
    }

    #[test]
    fn a_feed_page_refuses_only_the_objects_in_conflict() {
        let ioc = |id: &str, value: &str| {
            format!(
                r#"{{"type": "indicator", "spec_version": "2.1", "id": "indicator--{id}", "pattern": "[domain-name:value = '{value}']", "pattern_type": "stix"}}"#
            )
        };
        let a = "1b1b7a7e-1111-4c1c-8a8a-000000000001";
        let b = "1b1b7a7e-1111-4c1c-8a8a-000000000002";
        let text = format!(
            r#"{{"type": "bundle", "objects": [{}, {}, {}, {}]}}"#,
            ioc(a, "one.example"),
            ioc(b, "kept.example"),
            ioc(a, "other.example"),
            ioc(a, "one.example"),
        );
        let d = defaults(Some(Tlp::Green));
        let page = parse_feed_page(&text, &d, NOW).unwrap();
        assert_eq!(
            values(&page),
            [(IndicatorType::Domain, "kept.example".into())]
        );
        assert_eq!(
            positions(&page),
            [
                format!("objects[0] (indicator--{a})"),
                format!("objects[2] (indicator--{a})"),
                format!("objects[3] (indicator--{a})"),
            ]
        );
        assert!(page.errors[0].reason.contains("the same id"), "{page:?}");
        // A file is refused whole, as before.
        let file = parse_input(InputFormat::Stix, &text, &d, NOW);
        assert!(file.items.is_empty());
        assert_eq!(positions(&file), ["input"]);
        // A page that is not read at all is an error, not a page of errors.
        for bad in ["{", "{\"type\": \"bundle\"}", "[]"] {
            assert!(parse_feed_page(bad, &d, NOW).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_become_tags_as_given_or_refuse_the_object() {
        let added = ["source:f".to_owned()];
        assert_eq!(
            tags_from_labels(vec!["PAP:RED".into(), "pii".into(), "pii".into()], &added),
            Ok(vec!["PAP:RED".into(), "pii".into(), "source:f".into()])
        );
        for bad in ["a b", "", "caf\u{e9}", &"x".repeat(65)] {
            assert!(
                tags_from_labels(vec![bad.into()], &added).is_err(),
                "{bad:?}"
            );
        }
        let many: Vec<String> = (0..32).map(|n| format!("t{n}")).collect();
        assert!(tags_from_labels(many, &added).is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:01.5Z"), Ok(1500));
        assert_eq!(
            parse_timestamp("2014-05-08T09:00:00.000000Z"),
            Ok(1_399_539_600_000)
        );
        assert_eq!(
            parse_timestamp("2014-05-08T11:00:00+02:00"),
            Ok(1_399_539_600_000)
        );
        assert_eq!(parse_timestamp("1969-12-31T23:59:59.9995Z"), Ok(-1));
        assert!(parse_timestamp("2014-05-08").is_err());
        assert!(parse_timestamp("yesterday").is_err());
    }
}
