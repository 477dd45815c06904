//! STIX 2.1 data markings on input: what each marking definition of a bundle means, and the
//! one TLP marking an indicator gets from its object markings and its granular markings.
//!
//! The rule is default deny. An item is never marked lower than any TLP marking that
//! applies to a property it carries, and a marking that cannot be represented as TLP is
//! never dropped: the object is refused with a reason naming the marking.
//!
//! - **Marking definitions** are read by what they say, not only by id. A definition is a TLP
//!   marking when it has a well-known TLP 1.0 or 2.0 id, a `name` `TLP:<level>`, a
//!   `definition_type` `tlp` with `definition.tlp`, a `statement` definition whose text is
//!   `TLP:<level>`, the TLP 2.0 extension's `tlp_2_0`, or OpenCTI's
//!   `x_opencti_definition_type` `TLP` with `x_opencti_definition` (levels case-insensitive,
//!   WHITE read as CLEAR). Every one of these that is present must name the same level; a
//!   definition whose parts disagree, that says `TLP:` with no level we know, that has a
//!   `definition_type` other than `tlp` or `statement` beside a TLP level, or whose id is
//!   defined twice with different meanings, is ambiguous. A definition with none of them
//!   (a copyright or terms statement, an OpenCTI PAP marking...) is not TLP.
//! - **Object markings** (`object_marking_refs`) apply to every property. Each reference
//!   must resolve to a TLP marking: a reference to an ambiguous or non-TLP definition, or to
//!   an id neither defined in the bundle nor a well-known TLP id, refuses the object. Two
//!   different TLP levels among them contradict each other and also refuse the object (there
//!   is no way to tell which one the producer meant for the whole object).
//! - **Granular markings** (`granular_markings`) apply to the properties their selectors
//!   name. One whose selectors name at least one property an item may carry raises the
//!   item's marking to its level when that is higher; its reference must resolve to a TLP
//!   marking as above, and a granular marking with `lang` only (it marks a language, not a
//!   handling rule) is refused. Granular markings whose every selector names a property in
//!   [`DROPPED_PROPERTIES`] are ignored: export writes those properties itself, so nothing
//!   they mark leaves with the item. Any other selector, including one naming a property
//!   the model does not read (`name`, `created`, `created_by_ref`, `external_references`,
//!   `lang`, custom properties: they are kept with the item and exported), counts as
//!   travelling: raising is safe, missing a restriction is not. A granular marking that is
//!   malformed (no selectors, a selector that is not a non-empty string, both or neither of
//!   `marking_ref` and `lang`) refuses the object wherever it points.
//!
//! Work is linear in the size of the input: selectors are looked at up to their first `.` or
//! `[`, never parsed recursively, and nested JSON is bounded by the JSON reader's own limit.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::str::FromStr;

use serde_json::{Map, Value};

use super::{Element, RawObject, TLP2_EXTENSION, well_known_tlp};
use crate::model::Tlp;

/// Characters of an id, name, selector or language shown in an error.
const SHOWN_CHARS: usize = 80;

/// Top-level properties whose value given on input never leaves with the item: export
/// writes them itself (`spec_version` is always `2.1`), so a granular marking that names
/// only these marks nothing that is published. Every other property travels: the model
/// carries it, or it is kept as given among the signed properties and exported
/// (`created`, `created_by_ref`, `external_references`, `lang`, `pattern_version`, ...).
pub(super) const DROPPED_PROPERTIES: [&str; 1] = ["spec_version"];

/// What a marking definition means here.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Meaning {
    /// A TLP marking of this level.
    Tlp(Tlp),
    /// A marking that is not TLP, described for the error (its name or statement).
    Other(String),
    /// A definition that contradicts itself, or another one with the same id.
    Ambiguous(String),
}

/// Why the markings of an object cannot be turned into one TLP marking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum MarkingError {
    /// A reference to a marking definition that is neither in the bundle nor well known.
    #[error(
        "{place} references {id}, which is neither a marking definition in the bundle nor a known TLP marking definition"
    )]
    Unknown {
        /// `object_marking_refs` or `granular_markings[N]`.
        place: String,
        /// The id referenced (shortened).
        id: String,
    },
    /// A reference to a marking that is not TLP.
    #[error(
        "{place} references {id}, a marking that is not TLP ({what}); only TLP markings can be carried, so the object is refused rather than shared without it"
    )]
    NotTlp {
        /// `object_marking_refs` or `granular_markings[N]`.
        place: String,
        /// The id referenced (shortened).
        id: String,
        /// The marking's name or statement.
        what: String,
    },
    /// A reference to a marking definition that says two things.
    #[error("{place} references {id}, an ambiguous marking definition: {reason}")]
    Ambiguous {
        /// `object_marking_refs` or `granular_markings[N]`.
        place: String,
        /// The id referenced (shortened).
        id: String,
        /// What contradicts what.
        reason: String,
    },
    /// Different TLP levels among the object markings.
    #[error("more than one TLP marking ({0})")]
    SeveralTlp(String),
    /// A property that is not a list of what it should hold.
    #[error("{0}")]
    Malformed(String),
    /// A granular marking giving a language and no marking.
    #[error(
        "granular_markings[{index}] marks {selector:?} with the language {lang:?} and no marking_ref, which cannot be represented"
    )]
    LangOnly {
        /// Its position in `granular_markings`.
        index: usize,
        /// The first travelling property it names (shortened).
        selector: String,
        /// The language (shortened).
        lang: String,
    },
}

/// The marking definitions of one bundle, by id.
pub(super) struct Definitions(HashMap<String, Meaning>);

impl Definitions {
    /// Reads every `marking-definition` object of the bundle. Problems are kept with the id
    /// and reported by the objects that reference it.
    pub(super) fn read(objects: &[Element]) -> Self {
        let mut definitions = HashMap::new();
        for element in objects {
            let Element::Object(object) = element else {
                continue;
            };
            if object.kind.as_ref().and_then(Value::as_str) != Some("marking-definition") {
                continue;
            }
            let Some(id) = object.id.as_ref().and_then(Value::as_str) else {
                continue;
            };
            let meaning = meaning(id, object);
            match definitions.entry(id.to_owned()) {
                Entry::Vacant(entry) => {
                    entry.insert(meaning);
                }
                Entry::Occupied(mut entry) => {
                    if *entry.get() != meaning {
                        entry.insert(Meaning::Ambiguous(
                            "the bundle defines it more than once, differently".into(),
                        ));
                    }
                }
            }
        }
        Definitions(definitions)
    }

    /// The TLP level of the marking `id`, referenced from `place`.
    fn resolve(&self, place: &str, id: &str) -> Result<Tlp, MarkingError> {
        let meaning = match self.0.get(id) {
            Some(meaning) => meaning.clone(),
            None => match well_known_tlp(id) {
                Some(tlp) => Meaning::Tlp(tlp),
                None => {
                    return Err(MarkingError::Unknown {
                        place: place.to_owned(),
                        id: shown(id),
                    });
                }
            },
        };
        match meaning {
            Meaning::Tlp(tlp) => Ok(tlp),
            Meaning::Other(what) => Err(MarkingError::NotTlp {
                place: place.to_owned(),
                id: shown(id),
                what,
            }),
            Meaning::Ambiguous(reason) => Err(MarkingError::Ambiguous {
                place: place.to_owned(),
                id: shown(id),
                reason,
            }),
        }
    }

    /// The TLP marking that `object_marking_refs` gives the whole object, if any.
    pub(super) fn object_marking(&self, refs: &Option<Value>) -> Result<Option<Tlp>, MarkingError> {
        let refs = match refs {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(refs)) => refs,
            Some(_) => return Err(not_strings()),
        };
        let mut found: Vec<Tlp> = Vec::new();
        for reference in refs {
            let id = reference.as_str().ok_or_else(not_strings)?;
            let tlp = self.resolve("object_marking_refs", id)?;
            if !found.contains(&tlp) {
                found.push(tlp);
            }
        }
        match found.as_slice() {
            [] => Ok(None),
            [tlp] => Ok(Some(*tlp)),
            several => {
                let names: Vec<String> = several.iter().map(Tlp::to_string).collect();
                Err(MarkingError::SeveralTlp(names.join(", ")))
            }
        }
    }

    /// The most restrictive TLP marking among the granular markings that apply to a
    /// travelling property, if any.
    pub(super) fn granular_floor(
        &self,
        markings: &Option<Value>,
    ) -> Result<Option<Tlp>, MarkingError> {
        let markings = match markings {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(markings)) => markings,
            Some(_) => {
                return Err(MarkingError::Malformed(
                    "granular_markings is not a list".into(),
                ));
            }
        };
        let mut floor = None;
        for (index, marking) in markings.iter().enumerate() {
            let malformed = |problem: &str| {
                MarkingError::Malformed(format!("granular_markings[{index}] {problem}"))
            };
            let Some(marking) = marking.as_object() else {
                return Err(malformed("is not an object"));
            };
            let travelling = travelling_selector(marking).map_err(malformed)?;
            let marking_ref = optional_string(marking, "marking_ref").map_err(malformed)?;
            let lang = optional_string(marking, "lang").map_err(malformed)?;
            let Some(selector) = travelling else {
                // Every selector names a dropped property: nothing it marks is published.
                continue;
            };
            match (marking_ref, lang) {
                (Some(id), None) => {
                    let tlp = self.resolve(&format!("granular_markings[{index}]"), id)?;
                    floor = floor.max(Some(tlp));
                }
                (None, Some(lang)) => {
                    return Err(MarkingError::LangOnly {
                        index,
                        selector: shown(selector),
                        lang: shown(lang),
                    });
                }
                (Some(_), Some(_)) => return Err(malformed("has both marking_ref and lang")),
                (None, None) => return Err(malformed("has neither marking_ref nor lang")),
            }
        }
        Ok(floor)
    }
}

fn not_strings() -> MarkingError {
    MarkingError::Malformed("object_marking_refs is not a list of strings".into())
}

/// The first selector of a granular marking that names a travelling property, `None` when
/// every one names a dropped property; an error for a missing, empty or wrongly typed list.
fn travelling_selector(marking: &Map<String, Value>) -> Result<Option<&str>, &'static str> {
    let selectors = match marking.get("selectors") {
        Some(Value::Array(selectors)) if !selectors.is_empty() => selectors,
        None | Some(Value::Null) | Some(Value::Array(_)) => return Err("has no selectors"),
        Some(_) => return Err("has selectors that are not a list"),
    };
    let mut travelling = None;
    for selector in selectors {
        let selector = selector
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or("has a selector that is not a non-empty string")?;
        if travelling.is_none() && travels(selector) {
            travelling = Some(selector);
        }
    }
    Ok(travelling)
}

/// Whether a selector (`pattern`, `kill_chain_phases.[0].phase_name`, `labels.[2]`) names
/// a property that may travel with the item: anything but [`DROPPED_PROPERTIES`].
fn travels(selector: &str) -> bool {
    let property = selector.split(['.', '[']).next().unwrap_or(selector);
    !DROPPED_PROPERTIES.contains(&property)
}

fn optional_string<'a>(
    marking: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, &'static str> {
    match marking.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(if name == "lang" {
            "has a lang that is not a string"
        } else {
            "has a marking_ref that is not a string"
        }),
    }
}

fn shown(text: &str) -> String {
    text.chars().take(SHOWN_CHARS).collect()
}

/// The level after `TLP:` (case-insensitive), when `text` starts with it.
fn tlp_prefixed(text: &str) -> Option<&str> {
    let text = text.trim();
    let (head, rest) = (text.get(..4)?, text.get(4..)?);
    head.eq_ignore_ascii_case("tlp:").then(|| rest.trim())
}

/// A TLP level as written in a definition: `amber`, `AMBER+STRICT`, `TLP:WHITE`.
fn level(text: &str) -> Option<Tlp> {
    let bare = tlp_prefixed(text).unwrap_or(text);
    Tlp::from_str(bare).ok()
}

/// The value of `key` in a JSON object, the key compared case-insensitively (OpenCTI
/// writes `definition: {"TLP": ...}` as well as `{"tlp": ...}`).
fn field<'a>(object: &'a Value, key: &str) -> Option<&'a Value> {
    object
        .as_object()?
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(key))
        .map(|(_, value)| value)
}

/// What one marking-definition object says.
fn meaning(id: &str, object: &RawObject) -> Meaning {
    let mut claims: Vec<(&'static str, Tlp)> = Vec::new();
    if let Some(tlp) = well_known_tlp(id) {
        claims.push(("its well-known id", tlp));
    }
    let name = object.name.as_ref().and_then(Value::as_str);
    if let Some(level_text) = name.and_then(tlp_prefixed) {
        match level(level_text) {
            Some(tlp) => claims.push(("its name", tlp)),
            None => {
                return Meaning::Ambiguous(format!(
                    "its name {:?} is not a TLP level",
                    shown(name.unwrap_or_default())
                ));
            }
        }
    }
    let definition_type = object.definition_type.as_ref().and_then(Value::as_str);
    let definition = object.definition.as_ref();
    let mut unread_type = None;
    match definition_type {
        None => {}
        Some(kind) if kind.eq_ignore_ascii_case("tlp") => {
            match definition
                .and_then(|d| field(d, "tlp"))
                .and_then(Value::as_str)
                .and_then(level)
            {
                Some(tlp) => claims.push(("its definition", tlp)),
                None => {
                    return Meaning::Ambiguous(
                        "definition_type is tlp but definition.tlp is not a TLP level".into(),
                    );
                }
            }
        }
        Some(kind) if kind.eq_ignore_ascii_case("statement") => {
            let statement = definition
                .and_then(|d| field(d, "statement"))
                .and_then(Value::as_str);
            if let Some(level_text) = statement.and_then(tlp_prefixed) {
                match level(level_text) {
                    Some(tlp) => claims.push(("its statement", tlp)),
                    None => {
                        return Meaning::Ambiguous(format!(
                            "its statement {:?} is not a TLP level",
                            shown(statement.unwrap_or_default())
                        ));
                    }
                }
            }
        }
        Some(kind) => unread_type = Some(kind),
    }
    if let Some(tlp2) = object
        .extensions
        .as_ref()
        .and_then(|e| e.get(TLP2_EXTENSION))
        .and_then(|e| e.get("tlp_2_0"))
    {
        match tlp2.as_str().and_then(level) {
            Some(tlp) => claims.push(("its TLP 2.0 extension", tlp)),
            None => {
                return Meaning::Ambiguous("its tlp_2_0 is not a TLP level".into());
            }
        }
    }
    let opencti_type = object
        .x_opencti_definition_type
        .as_ref()
        .and_then(Value::as_str);
    let opencti = object.x_opencti_definition.as_ref().and_then(Value::as_str);
    let opencti_is_tlp = match opencti_type {
        Some(kind) => kind.trim().eq_ignore_ascii_case("tlp"),
        None => opencti.and_then(tlp_prefixed).is_some(),
    };
    if opencti_is_tlp {
        match opencti.and_then(level) {
            Some(tlp) => claims.push(("its x_opencti_definition", tlp)),
            None => {
                return Meaning::Ambiguous(
                    "x_opencti_definition_type is TLP but x_opencti_definition is not a TLP level"
                        .into(),
                );
            }
        }
    }

    let Some(&(_, first)) = claims.first() else {
        let what = name
            .or_else(|| {
                definition
                    .and_then(|d| field(d, "statement"))
                    .and_then(Value::as_str)
            })
            .or(opencti)
            .or(definition_type)
            .unwrap_or("no TLP level");
        return Meaning::Other(format!("{:?}", shown(what)));
    };
    if let Some(kind) = unread_type {
        return Meaning::Ambiguous(format!(
            "{} says {first} but its definition_type is {:?}, not tlp or statement",
            claims[0].0,
            shown(kind)
        ));
    }
    if let Some(&(other_source, other)) = claims.iter().find(|(_, tlp)| *tlp != first) {
        return Meaning::Ambiguous(format!(
            "{} says {first} but {other_source} says {other}",
            claims[0].0
        ));
    }
    Meaning::Tlp(first)
}
