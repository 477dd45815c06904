//! STIX 2.1 bundles in, STIX 2.1 `indicator` objects out. Only what items carry is read:
//! indicators (their pattern, markings, labels, validity, version and revocation) and TLP
//! marking definitions; every other object is skipped. Positions are `objects[N] (id)`.
//!
//! TLP markings are recognised by the well-known marking-definition ids of the OASIS TLP 2.0
//! extension and of STIX 2.1 itself (TLP 1.0, where WHITE is read as CLEAR), and by TLP
//! marking definitions carried in the same bundle under any id (by their name, definition,
//! TLP 2.0 extension or OpenCTI properties). An indicator's marking is the TLP marking of its
//! `object_marking_refs`, raised by any granular marking on a property the item carries; a
//! marking that cannot be represented refuses the object (see [`markings`]).

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

use self::markings::Definitions;
use super::pattern;
use super::strict_json::Budget;
use super::{Conflicts, Draft, Sink, TooMany, parse_timestamp};
use crate::model::{
    ContextObject, Holder, Indicator, IndicatorType, Item, ItemId, ItemKind, Revocation,
    StixProperties, Tlp, normalise_typed, phases_kept_as_given,
};

mod markings;
#[cfg(test)]
mod markings_tests;
mod schema;

/// The OASIS TLP 2.0 extension definition (`extension-definition--60a3c5c5-…`), whose
/// marking definitions carry the level in `tlp_2_0`.
const TLP2_EXTENSION: &str = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d";

/// Marking-definition ids of TLP 2.0 (OASIS `cti-stix-common-objects`, TLP 2.0 extension).
const TLP2_MARKINGS: [(&str, Tlp); 5] = [
    (
        "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
        Tlp::Clear,
    ),
    (
        "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
        Tlp::Green,
    ),
    (
        "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
        Tlp::Amber,
    ),
    (
        "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
        Tlp::AmberStrict,
    ),
    (
        "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
        Tlp::Red,
    ),
];

/// Marking-definition ids of TLP 1.0 defined by STIX 2.1 (section 7.2.1.4).
const TLP1_MARKINGS: [(&str, Tlp); 4] = [
    (
        "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
        Tlp::Clear,
    ),
    (
        "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
        Tlp::Green,
    ),
    (
        "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
        Tlp::Amber,
    ),
    (
        "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
        Tlp::Red,
    ),
];

/// Custom property naming the type of a revoked indicator, which has no pattern on export.
const REVOKED_TYPE_PROPERTY: &str = "x_entente_indicator_type";
/// Custom property carrying a revocation's reason.
const REVOCATION_REASON_PROPERTY: &str = "x_entente_revocation_reason";
/// Reason of revocations read from STIX input without one of ours.
const STIX_REVOCATION_REASON: &str = "revoked in STIX input";
/// How much of an object id a position shows.
const SHOWN_ID_CHARS: usize = 80;

/// The marking-definition id of a TLP 2.0 marking.
pub(super) fn tlp2_marking_id(tlp: Tlp) -> &'static str {
    let index = match tlp {
        Tlp::Clear => 0,
        Tlp::Green => 1,
        Tlp::Amber => 2,
        Tlp::AmberStrict => 3,
        Tlp::Red => 4,
    };
    TLP2_MARKINGS[index].0
}

/// The marking whose TLP 2.0 `marking-definition` object has id `id` (the objects
/// [`tlp_marking_definition`] writes), if it is one.
pub fn tlp2_marking(id: &str) -> Option<Tlp> {
    TLP2_MARKINGS
        .iter()
        .find(|(known, _)| *known == id)
        .map(|&(_, tlp)| tlp)
}

/// The marking of a well-known TLP marking-definition id.
fn well_known_tlp(id: &str) -> Option<Tlp> {
    TLP2_MARKINGS
        .iter()
        .chain(TLP1_MARKINGS.iter())
        .find(|(known, _)| *known == id)
        .map(|&(_, tlp)| tlp)
}

/// The top level of a bundle; everything but `type` and `objects` is skipped unread.
#[derive(Deserialize)]
struct RawBundle {
    #[serde(rename = "type")]
    kind: Option<Value>,
    objects: Option<Vec<Element>>,
}

/// A reference property (`created_by_ref`, `object_refs`, …) with each STIX id in it in
/// lower case, as the node writes ids: a report naming `INDICATOR--…` would otherwise
/// name, in an export, no object the export holds. Strings that are not ids are left as
/// they are.
fn ids_in_lower_case(value: Value) -> Value {
    let lower = |text: String| {
        let is_id = text.split_once("--").is_some_and(|(ty, uuid)| {
            !ty.is_empty() && uuid.len() == 36 && uuid::Uuid::try_parse(uuid).is_ok()
        });
        if is_id && text.bytes().any(|b| b.is_ascii_uppercase()) {
            text.to_ascii_lowercase()
        } else {
            text
        }
    };
    match value {
        Value::String(text) => Value::String(lower(text)),
        Value::Array(list) => Value::Array(
            list.into_iter()
                .map(|v| match v {
                    Value::String(text) => Value::String(lower(text)),
                    other => other,
                })
                .collect(),
        ),
        other => other,
    }
}

/// One element of `objects`.
enum Element {
    /// A JSON object.
    Object(Box<RawObject>),
    /// Anything else (an error in the input).
    NotAnObject,
}

/// The properties of an object, those read here by name and every other one in
/// `other`. Each is kept as loose JSON so that a wrongly typed property fails only its
/// own object.
#[derive(Default)]
struct RawObject {
    kind: Option<Value>,
    id: Option<Value>,
    pattern: Option<Value>,
    pattern_type: Option<Value>,
    labels: Option<Value>,
    description: Option<Value>,
    confidence: Option<Value>,
    kill_chain_phases: Option<Value>,
    valid_from: Option<Value>,
    valid_until: Option<Value>,
    modified: Option<Value>,
    revoked: Option<Value>,
    object_marking_refs: Option<Value>,
    granular_markings: Option<Value>,
    name: Option<Value>,
    definition_type: Option<Value>,
    definition: Option<Value>,
    extensions: Option<Value>,
    x_entente_indicator_type: Option<Value>,
    x_entente_revocation_reason: Option<Value>,
    x_opencti_definition_type: Option<Value>,
    x_opencti_definition: Option<Value>,
    /// Every other property.
    other: Map<String, Value>,
}

impl RawObject {
    /// Stores one property, or refuses a property given twice: parsers disagree on which
    /// of the two counts, so the object has no one meaning.
    fn set(&mut self, key: Key<'_>, value: Value) -> Result<(), String> {
        let slot = match &*key.0 {
            "type" => &mut self.kind,
            "id" => &mut self.id,
            "pattern" => &mut self.pattern,
            "pattern_type" => &mut self.pattern_type,
            "labels" => &mut self.labels,
            "description" => &mut self.description,
            "confidence" => &mut self.confidence,
            "kill_chain_phases" => &mut self.kill_chain_phases,
            "valid_from" => &mut self.valid_from,
            "valid_until" => &mut self.valid_until,
            "modified" => &mut self.modified,
            "revoked" => &mut self.revoked,
            "object_marking_refs" => &mut self.object_marking_refs,
            "granular_markings" => &mut self.granular_markings,
            "name" => &mut self.name,
            "definition_type" => &mut self.definition_type,
            "definition" => &mut self.definition,
            "extensions" => &mut self.extensions,
            "x_entente_indicator_type" => &mut self.x_entente_indicator_type,
            "x_entente_revocation_reason" => &mut self.x_entente_revocation_reason,
            "x_opencti_definition_type" => &mut self.x_opencti_definition_type,
            "x_opencti_definition" => &mut self.x_opencti_definition,
            _ => {
                let value = if key.0.ends_with("_ref") || key.0.ends_with("_refs") {
                    ids_in_lower_case(value)
                } else {
                    value
                };
                return match self.other.entry(key.0.into_owned()) {
                    serde_json::map::Entry::Vacant(free) => {
                        free.insert(value);
                        Ok(())
                    }
                    serde_json::map::Entry::Occupied(taken) => Err(given_twice(taken.key())),
                };
            }
        };
        if slot.is_some() {
            return Err(given_twice(&key.0));
        }
        *slot = Some(value);
        Ok(())
    }

    /// A property, whether named here or among the others; `None` when absent or null.
    fn get(&self, key: &str) -> Option<&Value> {
        let named = match key {
            "type" => &self.kind,
            "id" => &self.id,
            "pattern" => &self.pattern,
            "pattern_type" => &self.pattern_type,
            "labels" => &self.labels,
            "description" => &self.description,
            "confidence" => &self.confidence,
            "kill_chain_phases" => &self.kill_chain_phases,
            "valid_from" => &self.valid_from,
            "valid_until" => &self.valid_until,
            "modified" => &self.modified,
            "revoked" => &self.revoked,
            "object_marking_refs" => &self.object_marking_refs,
            "granular_markings" => &self.granular_markings,
            "name" => &self.name,
            "definition_type" => &self.definition_type,
            "definition" => &self.definition,
            "extensions" => &self.extensions,
            "x_entente_indicator_type" => &self.x_entente_indicator_type,
            "x_entente_revocation_reason" => &self.x_entente_revocation_reason,
            "x_opencti_definition_type" => &self.x_opencti_definition_type,
            "x_opencti_definition" => &self.x_opencti_definition,
            other => return self.other.get(other).filter(|v| !v.is_null()),
        };
        named.as_ref().filter(|v| !v.is_null())
    }

    /// The properties an indicator keeps besides those the model carries: every one but
    /// the modelled ones ([`crate::model::StixProperties::keep`] drops those).
    fn kept(&self) -> Map<String, Value> {
        self.with_named(self.other.clone())
    }

    /// `all` with the named properties an indicator keeps.
    fn with_named(&self, mut all: Map<String, Value>) -> Map<String, Value> {
        let named = [
            ("description", &self.description),
            ("name", &self.name),
            ("definition_type", &self.definition_type),
            ("definition", &self.definition),
            ("extensions", &self.extensions),
            ("x_opencti_definition_type", &self.x_opencti_definition_type),
            ("x_opencti_definition", &self.x_opencti_definition),
        ];
        for (key, value) in named {
            if let Some(value) = value {
                all.insert(key.to_owned(), value.clone());
            }
        }
        all
    }

    /// Every property of the object but its type and id (a context object keeps all that
    /// its own fields do not carry: [`Holder::Context`]).
    fn all(&self) -> Map<String, Value> {
        let mut all = self.kept();
        let named = [
            ("pattern", &self.pattern),
            ("pattern_type", &self.pattern_type),
            ("labels", &self.labels),
            ("confidence", &self.confidence),
            ("kill_chain_phases", &self.kill_chain_phases),
            ("valid_from", &self.valid_from),
            ("valid_until", &self.valid_until),
            ("modified", &self.modified),
            ("revoked", &self.revoked),
            ("object_marking_refs", &self.object_marking_refs),
            ("granular_markings", &self.granular_markings),
            ("x_entente_indicator_type", &self.x_entente_indicator_type),
            (
                "x_entente_revocation_reason",
                &self.x_entente_revocation_reason,
            ),
        ];
        for (key, value) in named {
            if let Some(value) = value {
                all.insert(key.to_owned(), value.clone());
            }
        }
        all
    }
}

/// A property name, borrowed from the text when it holds no escape: most names are
/// those [`RawObject::set`] matches, and need no copy of their own.
struct Key<'a>(Cow<'a, str>);

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Key<'de>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a property name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

impl<'de> Deserialize<'de> for Element {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let unbounded = Cell::new(usize::MAX);
        deserializer.deserialize_any(ElementVisitor {
            budget: Budget::new(&unbounded),
        })
    }
}

/// One element of `objects`, its values counted against a budget shared by the whole
/// text.
#[derive(Clone, Copy)]
struct ElementSeed<'a> {
    budget: Budget<'a>,
}

impl<'de> DeserializeSeed<'de> for ElementSeed<'_> {
    type Value = Element;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Element, D::Error> {
        deserializer.deserialize_any(ElementVisitor {
            budget: self.budget,
        })
    }
}

struct ElementVisitor<'a> {
    budget: Budget<'a>,
}

impl<'de> Visitor<'de> for ElementVisitor<'_> {
    type Value = Element;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a STIX object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Element, A::Error> {
        self.budget.take()?;
        // Filled in place, where it is kept.
        let mut object = Box::<RawObject>::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            // A name given twice is refused at every depth, not only here.
            let value = map.next_value_seed(self.budget)?;
            object.set(key, value).map_err(de::Error::custom)?;
        }
        Ok(Element::Object(object))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Element, A::Error> {
        // Read value by value, within the budget and refusing a name given twice, then
        // dropped: the element is refused as not an object all the same.
        self.budget.take()?;
        while seq.next_element_seed(self.budget)?.is_some() {}
        Ok(Element::NotAnObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Element, E> {
        Ok(Element::NotAnObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Element, E> {
        Ok(Element::NotAnObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Element, E> {
        Ok(Element::NotAnObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Element, E> {
        Ok(Element::NotAnObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Element, E> {
        Ok(Element::NotAnObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Element, E> {
        Ok(Element::NotAnObject)
    }
}

pub(super) fn parse(text: &str, now_ms: i64, sink: &mut Sink<'_>) -> Result<(), TooMany> {
    let bundle: RawBundle = match serde_json::from_str(text) {
        Ok(bundle) => bundle,
        Err(e) => {
            let position = match e.line() {
                0 => "input".to_owned(),
                line => format!("line {line} column {}", e.column()),
            };
            sink.refuse_input(position, format!("not a valid STIX bundle: {e}"));
            return Ok(());
        }
    };
    let mut objects = match (bundle.kind.as_ref().and_then(Value::as_str), bundle.objects) {
        (Some("bundle"), Some(objects)) => objects,
        (Some("bundle"), None) => {
            sink.refuse_input("input".into(), "the bundle has no \"objects\" array".into());
            return Ok(());
        }
        _ => {
            sink.refuse_input(
                "input".into(),
                "expected a STIX 2.1 bundle: {\"type\": \"bundle\", \"objects\": [...]}".into(),
            );
            return Ok(());
        }
    };
    parse_objects(&mut objects, now_ms, sink)
}

/// What a TAXII envelope (`{"objects": [...], ...}`) holds: its objects, read as
/// [`parse`] reads a bundle's, and the id, version and type of each for the status.
pub(super) fn parse_envelope(
    bytes: &[u8],
    max_values: usize,
    max_objects: usize,
    now_ms: i64,
    sink: &mut Sink<'_>,
) -> Result<Vec<super::EnvelopeEntry>, super::EnvelopeError> {
    use super::EnvelopeError;
    let left = Cell::new(max_values);
    let seed = EnvelopeSeed {
        budget: Budget::new(&left),
        max_objects,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let objects = seed
        .deserialize(&mut deserializer)
        .and_then(|objects| deserializer.end().map(|()| objects))
        .map_err(|e| match e.classify() {
            // Any other shape is refused by serde's default, which names what was
            // expected.
            serde_json::error::Category::Data
                if e.to_string()
                    .contains(&format!("expected {NOT_AN_ENVELOPE}")) =>
            {
                EnvelopeError::NotAnEnvelope
            }
            serde_json::error::Category::Data if e.to_string().starts_with(OBJECT_COUNT) => {
                EnvelopeError::ObjectCount
            }
            _ => EnvelopeError::Json(e.to_string()),
        })?;
    let mut objects = objects.ok_or(EnvelopeError::NotAnEnvelope)?;
    if objects.is_empty() {
        return Err(EnvelopeError::ObjectCount);
    }
    let entries = objects
        .iter()
        .map(|element| {
            let Element::Object(object) = element else {
                return super::EnvelopeEntry::default();
            };
            let text = |value: &Option<Value>, chars: usize| {
                value
                    .as_ref()
                    .and_then(Value::as_str)
                    .map(|s| match s.char_indices().nth(chars) {
                        Some((end, _)) => s[..end].to_owned(),
                        None => s.to_owned(),
                    })
            };
            super::EnvelopeEntry {
                id: text(&object.id, SHOWN_ENTRY_ID_CHARS).unwrap_or_default(),
                version: text(&object.modified, SHOWN_ENTRY_VERSION_CHARS),
                version_ms: object
                    .modified
                    .as_ref()
                    .and_then(Value::as_str)
                    .and_then(|text| super::parse_timestamp(text).ok()),
                kind: text(&object.kind, SHOWN_ENTRY_ID_CHARS),
            }
        })
        .collect();
    // An envelope within `max_objects` is within the sink's bound as well.
    let _ = parse_objects(&mut objects, now_ms, sink);
    Ok(entries)
}

/// Most characters of an object's id and type a status repeats.
const SHOWN_ENTRY_ID_CHARS: usize = 200;
/// Most characters of an object's version a status repeats.
const SHOWN_ENTRY_VERSION_CHARS: usize = 64;
/// What the envelope reader expects, as its refusals of any other shape say it; and
/// how its refusal of too many objects begins, to tell both from JSON errors.
const NOT_AN_ENVELOPE: &str = "a TAXII envelope";
const OBJECT_COUNT: &str = "too many objects";

/// The top level of a TAXII envelope: `objects` is read element by element; every other
/// member is read (within the budget, refusing a name given twice) and dropped.
struct EnvelopeSeed<'a> {
    budget: Budget<'a>,
    max_objects: usize,
}

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = Option<Vec<Element>>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = Option<Vec<Element>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(NOT_AN_ENVELOPE)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        self.budget.take()?;
        let mut objects = None;
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(given_twice(&key)));
            }
            if key == "objects" {
                objects = Some(map.next_value_seed(ElementsSeed {
                    budget: self.budget,
                    max_objects: self.max_objects,
                })?);
            } else {
                map.next_value_seed(self.budget)?;
            }
        }
        Ok(objects)
    }
}

/// An envelope's `objects` array, refused past `max_objects` elements as it is read.
struct ElementsSeed<'a> {
    budget: Budget<'a>,
    max_objects: usize,
}

impl<'de> DeserializeSeed<'de> for ElementsSeed<'_> {
    type Value = Vec<Element>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ElementsSeed<'_> {
    type Value = Vec<Element>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(NOT_AN_ENVELOPE)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        self.budget.take()?;
        let mut out = Vec::new();
        while let Some(element) = seq.next_element_seed(ElementSeed {
            budget: self.budget,
        })? {
            if out.len() == self.max_objects {
                return Err(de::Error::custom(OBJECT_COUNT));
            }
            out.push(element);
        }
        Ok(out)
    }
}

/// Reads a bundle's or an envelope's objects into `sink`.
fn parse_objects(objects: &mut [Element], now_ms: i64, sink: &mut Sink<'_>) -> Result<(), TooMany> {
    if objects.len() > sink.max_items {
        return Err(TooMany);
    }
    let markings = Definitions::read(objects);
    // The indicator each id was first read as, to refuse an input that gives one id two
    // different values: which one is meant cannot be told, and publishing both would make
    // one the silent replacement of the other.
    // Each id maps to the object's place in the input and its item's place in `sink`.
    // Sized for a TAXII envelope's objects at once (those of a large file still grow it).
    let mut first_seen: HashMap<ItemId, (usize, usize)> =
        HashMap::with_capacity(objects.len().min(PRESIZED_IDS));
    // When only the objects in conflict are refused: the object each item came from,
    // and the ids given two values, with the reason.
    let per_object = sink.conflicts == Conflicts::RefuseObjects;
    let mut object_of_item: Vec<usize> = Vec::new();
    let mut conflicting: HashMap<ItemId, String> = HashMap::new();
    for (index, element) in objects.iter_mut().enumerate() {
        sink.count()?;
        let before = sink.out.items.len();
        let object = match element {
            Element::Object(object) => object,
            Element::NotAnObject => {
                sink.error(format!("objects[{index}]"), "not a JSON object".into());
                continue;
            }
        };
        match object.kind.as_ref().and_then(Value::as_str) {
            Some(ty) if IndicatorType::context_type(ty).is_some() => {
                let object_type = IndicatorType::context_type(ty).unwrap_or(IndicatorType::Malware);
                match context(object, object_type, &markings, now_ms) {
                    // A relationship with an end of a type this node does not share (an
                    // identity, a vulnerability, ...) is skipped like those objects.
                    Ok(None) => {}
                    Ok(Some(draft)) => sink.take(|| position(index, object), Ok(draft)),
                    Err(reason) => sink.take(|| position(index, object), Err(reason)),
                }
            }
            Some("indicator") => {
                let draft = indicator(object, &markings, now_ms);
                sink.take(|| position(index, object), draft);
                let Some(item) = sink.out.items.get(before) else {
                    continue;
                };
                if per_object {
                    object_of_item.push(index);
                }
                let Some(value) = item.value() else {
                    continue;
                };
                let ty = item.indicator_type();
                let &mut (first, first_item) =
                    first_seen.entry(item.id.clone()).or_insert((index, before));
                let Some(first_item) = sink.out.items.get(first_item) else {
                    continue;
                };
                let first_ty = first_item.indicator_type();
                let first_value = first_item.value().unwrap_or_default();
                if first_ty != ty || first_value != value {
                    let values = format!(
                        "objects[{first}] and objects[{index}] have the same id {} but different \
                         values ({first_ty} {:?} and {ty} {:?})",
                        item.id,
                        shown(first_value),
                        shown(value),
                    );
                    match sink.conflicts {
                        Conflicts::RefuseInput => {
                            sink.refuse_input(
                                "input".into(),
                                format!("{values}; the whole input is refused"),
                            );
                            return Ok(());
                        }
                        Conflicts::RefuseObjects => {
                            conflicting.entry(item.id.clone()).or_insert_with(|| {
                                format!("{values}; no object with this id is taken, the rest is")
                            });
                        }
                    }
                }
                continue;
            }
            Some(_) => {}
            None => sink.error(
                position(index, object),
                "no \"type\" (a string) on the object".into(),
            ),
        }
        if per_object && sink.out.items.len() > before {
            object_of_item.push(index);
        }
    }
    if !conflicting.is_empty() {
        // Every object giving an id in conflict is refused, with its own position.
        let items = std::mem::take(&mut sink.out.items);
        for (item, index) in items.into_iter().zip(object_of_item) {
            match conflicting.get(&item.id) {
                Some(reason) => {
                    let position = format!("objects[{index}] ({})", item.id);
                    sink.error(position, reason.clone());
                }
                None => sink.out.items.push(item),
            }
        }
    }
    Ok(())
}

/// Most ids the map of an input's first items is sized for before it is filled.
const PRESIZED_IDS: usize = 10_000;

/// The start of a value, for messages.
/// The error for a property name given twice in one object.
fn given_twice(name: &str) -> String {
    format!("the name {:?} is given twice in one object", shown(name))
}

fn shown(value: &str) -> String {
    value.chars().take(SHOWN_ID_CHARS).collect()
}

/// `objects[N] (id)`, or `objects[N]` when the object has no string id.
fn position(index: usize, object: &RawObject) -> String {
    match object.id.as_ref().and_then(Value::as_str) {
        Some(id) => {
            let shown: String = id.chars().take(SHOWN_ID_CHARS).collect();
            format!("objects[{index}] ({shown})")
        }
        None => format!("objects[{index}]"),
    }
}

/// Reads one indicator object.
fn indicator(object: &mut RawObject, markings: &Definitions, now_ms: i64) -> Result<Draft, String> {
    schema::check(object, "indicator")?;
    // The unmodelled properties, taken out rather than copied: nothing reads them again.
    let other = std::mem::take(&mut object.other);
    let id = match string(&object.id, "id")? {
        Some(id) => ItemId::parse(id).map_err(|e| e.to_string())?,
        None => return Err("no id".into()),
    };
    let tlp = markings
        .object_marking(&object.object_marking_refs)
        .map_err(|e| e.to_string())?;
    let floor = markings
        .granular_floor(&object.granular_markings)
        .map_err(|e| e.to_string())?;
    let tags = strings(&object.labels, "labels")?;
    let modified_ms = timestamp(&object.modified, "modified")?.unwrap_or(now_ms);
    match string(&object.pattern_type, "pattern_type")? {
        None | Some("stix") => {}
        Some(other) => {
            let shown: String = other.chars().take(40).collect();
            return Err(format!(
                "pattern_type {shown:?} is not supported (only \"stix\")"
            ));
        }
    }
    let pattern = string(&object.pattern, "pattern")?;
    let revoked = match &object.revoked {
        None | Some(Value::Null) => false,
        Some(Value::Bool(revoked)) => *revoked,
        Some(_) => return Err("revoked is not true or false".into()),
    };
    let mut kept = other;
    // The named properties an indicator keeps that nothing reads again are taken rather
    // than copied (the markings were read from the whole input before).
    for (name, value) in [
        ("name", object.name.take()),
        ("definition_type", object.definition_type.take()),
        ("definition", object.definition.take()),
        ("extensions", object.extensions.take()),
        (
            "x_opencti_definition_type",
            object.x_opencti_definition_type.take(),
        ),
        ("x_opencti_definition", object.x_opencti_definition.take()),
    ] {
        if let Some(value) = value {
            kept.insert(name.to_owned(), value);
        }
    }
    // A confidence of 0 and `revoked: false` are kept as given (the model reads them as
    // it reads their absence), and so are kill chain phases the model's `chain:phase`
    // form cannot hold, and an empty description; the model keeps none of the other
    // modelled ones. Those read again below are copied only when kept.
    for (name, value) in [
        ("description", &object.description),
        ("confidence", &object.confidence),
        ("revoked", &object.revoked),
        ("kill_chain_phases", &object.kill_chain_phases),
    ] {
        if let Some(value) = value.as_ref().filter(|v| Holder::Indicator.keeps(name, v)) {
            kept.insert(name.to_owned(), value.clone());
        }
    }
    let properties =
        StixProperties::keep_owned(Holder::Indicator, kept).map_err(|e| e.to_string())?;
    // The indicator the object describes; a revoked object without a pattern (as this
    // node wrote revocations before they carried their indicator) has none.
    let described = match pattern {
        Some(pattern) => {
            // A control character (a line break) is refused in any pattern, as it is
            // through `Intel.Publish`, rather than trimmed from a single comparison's
            // value on the way to a typed indicator. White space around the pattern
            // (line breaks included) is not part of it: the pattern kept is trimmed, so
            // it is recognised, or not, as that trimmed pattern will be when read again.
            let recognised = if pattern.trim().chars().any(char::is_control) {
                None
            } else {
                pattern::recognise(pattern)
            };
            let (indicator_type, value) = match recognised {
                Some((ty, value)) => normalise_typed(ty, &value),
                None => normalise_typed(IndicatorType::StixPattern, pattern),
            }
            .map_err(|e| e.to_string())?;
            Some(Indicator {
                indicator_type,
                value,
                description: string(&object.description, "description")?
                    .unwrap_or("")
                    .to_owned(),
                confidence: confidence(&object.confidence)?,
                kill_chain_phases: match &object.kill_chain_phases {
                    Some(phases) if phases_kept_as_given(phases) => Vec::new(),
                    phases => kill_chain_phases(phases)?,
                },
                valid_from_ms: timestamp(&object.valid_from, "valid_from")?.unwrap_or(now_ms),
                valid_until_ms: timestamp(&object.valid_until, "valid_until")?,
                properties,
            })
        }
        None => None,
    };
    let kind = if revoked {
        let indicator_type = match &described {
            Some(indicator) => indicator.indicator_type,
            None => match string(&object.x_entente_indicator_type, REVOKED_TYPE_PROPERTY)? {
                Some(name) => IndicatorType::from_str(name).map_err(|e| e.to_string())?,
                None => return Err("revoked indicator has no pattern to tell its type".into()),
            },
        };
        let reason = string(
            &object.x_entente_revocation_reason,
            REVOCATION_REASON_PROPERTY,
        )?
        .unwrap_or(STIX_REVOCATION_REASON);
        ItemKind::Revocation(Revocation {
            indicator_type,
            reason: reason.to_owned(),
            indicator: described.map(Box::new),
        })
    } else {
        ItemKind::Indicator(described.ok_or("no pattern")?)
    };
    Ok(Draft {
        id: Some(id),
        modified_ms,
        tlp,
        floor,
        tags,
        kind,
    })
}

/// Reads one context object: `None` for a relationship whose end is of a type this node
/// does not share.
fn context(
    object: &RawObject,
    object_type: IndicatorType,
    markings: &Definitions,
    now_ms: i64,
) -> Result<Option<Draft>, String> {
    let id = match string(&object.id, "id")? {
        Some(id) => ItemId::parse(id).map_err(|e| e.to_string())?,
        None => return Err("no id".into()),
    };
    if id.stix_type() != object_type.as_str() {
        return Err(format!("{id} is not the id of a {object_type}"));
    }
    schema::check(object, object_type.as_str())?;
    let tlp = markings
        .object_marking(&object.object_marking_refs)
        .map_err(|e| e.to_string())?;
    let floor = markings
        .granular_floor(&object.granular_markings)
        .map_err(|e| e.to_string())?;
    let tags = strings(&object.labels, "labels")?;
    let modified_ms = timestamp(&object.modified, "modified")?.unwrap_or(now_ms);
    let refs = match object_type {
        IndicatorType::Relationship => {
            let end = |name: &str| -> Result<Option<ItemId>, String> {
                match object.other.get(name).and_then(Value::as_str) {
                    Some(text) => Ok(ItemId::parse(text).ok()),
                    None => Err(format!("a relationship needs {name}")),
                }
            };
            match (end("source_ref")?, end("target_ref")?) {
                (Some(source), Some(target)) => vec![source, target],
                _ => return Ok(None),
            }
        }
        IndicatorType::Report => {
            let listed = strings(&object.other.get("object_refs").cloned(), "object_refs")?;
            listed
                .iter()
                .filter_map(|r| ItemId::parse(r).ok())
                .collect()
        }
        IndicatorType::Sighting => {
            // A sighting of something this node does not share (observed data, a
            // location, ...) is skipped like that object.
            let sighted = match object.other.get("sighting_of_ref").and_then(Value::as_str) {
                Some(text) => match ItemId::parse(text) {
                    Ok(id) => id,
                    Err(_) => return Ok(None),
                },
                None => return Err("a sighting needs sighting_of_ref".into()),
            };
            let mut refs = vec![sighted];
            for name in ["observed_data_refs", "where_sighted_refs"] {
                let listed = strings(&object.other.get(name).cloned(), name)?;
                refs.extend(listed.iter().filter_map(|r| ItemId::parse(r).ok()));
            }
            refs
        }
        _ => Vec::new(),
    };
    let properties =
        StixProperties::keep_owned(Holder::Context, object.all()).map_err(|e| e.to_string())?;
    Ok(Some(Draft {
        id: Some(id),
        modified_ms,
        tlp,
        floor,
        tags,
        kind: ItemKind::Context(ContextObject {
            object_type,
            refs,
            properties,
        }),
    }))
}

/// A string property, absent when missing or null.
fn string<'a>(value: &'a Option<Value>, name: &str) -> Result<Option<&'a str>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{name} is not a string")),
    }
}

/// A list of strings, empty when missing or null.
fn strings(value: &Option<Value>, name: &str) -> Result<Vec<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{name} is not a list of strings"))
            })
            .collect(),
        Some(_) => Err(format!("{name} is not a list of strings")),
    }
}

fn timestamp(value: &Option<Value>, name: &str) -> Result<Option<i64>, String> {
    string(value, name)?
        .map(|text| parse_timestamp(text).map_err(|e| format!("{name}: {e}")))
        .transpose()
}

fn confidence(value: &Option<Value>) -> Result<u8, String> {
    match value {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .filter(|&c| c <= 100)
            .and_then(|c| u8::try_from(c).ok())
            .ok_or_else(|| "confidence must be a whole number from 0 to 100".into()),
    }
}

fn kill_chain_phases(value: &Option<Value>) -> Result<Vec<String>, String> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err("kill_chain_phases is not a list".into()),
    };
    items
        .iter()
        .enumerate()
        .map(|(index, phase)| {
            let chain = phase.get("kill_chain_name").and_then(Value::as_str);
            let name = phase.get("phase_name").and_then(Value::as_str);
            match (chain, name) {
                (Some(chain), Some(name)) => Ok(format!("{chain}:{name}")),
                _ => Err(format!(
                    "kill_chain_phases[{index}] needs kill_chain_name and phase_name strings"
                )),
            }
        })
        .collect()
}

/// One STIX 2.1 `indicator` object for an item, marked with its TLP 2.0 marking
/// definition, with no origin known (see [`to_stix_from`]).
pub fn to_stix(item: &Item) -> Value {
    to_stix_from(item, None)
}

/// One STIX 2.1 `indicator` object for an item published by `origin`: every STIX
/// property the indicator came with, then the fields the item carries, which take
/// precedence. What changes on the way through a node (the documented normalisation):
///
/// - the pattern is written from the normalised value (`[domain-name:value = 'a.example']`
///   for `A.Example.`); `pattern_type` is `stix` and `pattern_version` `2.1` when absent;
/// - `labels` are the item's tags (lower case, without repeats);
/// - `object_marking_refs` is the TLP 2.0 marking of the item, granular markings are
///   folded into it and not written;
/// - `created` is kept, written to the millisecond (truncated, in UTC), or is the
///   version when the input gave none (or a later one, at its full precision);
/// - ids are in lower case ([`ItemId::parse`]);
/// - `name` is the value and `description` says what and from whom when the input gave
///   none (STIX asks for both); `created_by_ref` is the origin's identity
///   ([`identity_id`]) when the input named no creator;
/// - a revocation is its indicator with `revoked: true` and its reason in
///   `x_entente_revocation_reason`. Revocations from before revocations carried their
///   indicator have no pattern; `x_entente_indicator_type` says what they revoke.
pub fn to_stix_from(item: &Item, origin: Option<&str>) -> Value {
    let text = write_stix_from(item, origin);
    let object = serde_json::from_str(&text);
    debug_assert!(object.is_ok(), "an exported object is JSON");
    object.unwrap_or_default()
}

/// The JSON text of [`to_stix_from`]'s object, written directly: the one place an
/// item's STIX form is decided. Its properties are in the order of their names, with
/// no spaces, as `serde_json` writes an object, so the text is the same as the
/// object's `to_string()`.
pub fn write_stix_from(item: &Item, origin: Option<&str>) -> String {
    let (indicator, revocation) = match &item.kind {
        ItemKind::Indicator(indicator) => (Some(indicator), None),
        ItemKind::Revocation(revocation) => (revocation.indicator.as_deref(), Some(revocation)),
        ItemKind::Context(context) => return context_to_stix(item, context, origin),
    };
    let mut object = match indicator {
        Some(indicator) => Exported::kept(&indicator.properties),
        None => Exported::default(),
    };
    object.head(item, "indicator");
    if let Some(indicator) = indicator {
        object.string(
            "pattern",
            pattern::write(indicator.indicator_type, &indicator.value),
        );
        object.string("pattern_type", "stix");
        if !object.has("pattern_version") {
            object.string("pattern_version", "2.1");
        }
        object.string("valid_from", stix_timestamp(indicator.valid_from_ms));
        if let Some(until) = indicator.valid_until_ms {
            object.string("valid_until", stix_timestamp(until));
        }
        if !object.is_string("name") {
            let name: String = indicator.value.chars().take(256).collect();
            object.string("name", name);
        }
        if !indicator.description.is_empty() {
            object.string("description", indicator.description.as_str());
        } else if !object.has("description") {
            let description = match origin {
                Some(origin) => {
                    format!("{} indicator shared by {origin}", indicator.indicator_type)
                }
                None => format!("{} indicator", indicator.indicator_type),
            };
            object.string("description", description);
        }
        if indicator.confidence > 0 {
            object.json("confidence", indicator.confidence.to_string());
        }
        if !indicator.kill_chain_phases.is_empty() {
            let phases: Vec<Value> = indicator
                .kill_chain_phases
                .iter()
                .map(|phase| {
                    let (chain, name) = phase.split_once(':').unwrap_or(("unknown", phase));
                    json!({ "kill_chain_name": chain, "phase_name": name })
                })
                .collect();
            object.json("kill_chain_phases", Value::Array(phases).to_string());
        }
    }
    if let Some(revocation) = revocation {
        object.json("revoked", "true".to_owned());
        if indicator.is_none() {
            object.string(REVOKED_TYPE_PROPERTY, revocation.indicator_type.as_str());
        }
        object.string(REVOCATION_REASON_PROPERTY, revocation.reason.as_str());
        // The two properties above are this node's own, declared by an extension
        // definition as STIX 2.1 asks of custom properties.
        // A kept `extensions` that is not an object is left as it was signed.
        let extensions = match object.value("extensions") {
            Some(Value::Object(extensions)) => Some(extensions),
            Some(_) => None,
            None => Some(Map::new()),
        };
        if let Some(mut extensions) = extensions {
            extensions.insert(
                REVOCATION_EXTENSION.into(),
                json!({ "extension_type": "toplevel-property-extension" }),
            );
            object.json("extensions", Value::Object(extensions).to_string());
        }
    }
    object.tail(item, origin);
    object.into_text()
}

/// An exported object's properties while it is written: the kept properties as their
/// JSON text, then what the item carries, which replaces a kept property of the same
/// name. Sorted by name, as `serde_json` orders an object's properties.
#[derive(Default)]
struct Exported<'a> {
    fields: std::collections::BTreeMap<Cow<'a, str>, Field<'a>>,
}

/// One property's value in an [`Exported`] object.
enum Field<'a> {
    /// JSON text kept as it was signed (canonical: sorted keys, no spaces).
    Kept(&'a serde_json::value::RawValue),
    /// A string, escaped as it is written.
    Str(Cow<'a, str>),
    /// JSON text written here: a number, `true`, a list or an object, in `serde_json`'s
    /// compact form.
    Json(String),
}

impl<'a> Exported<'a> {
    /// The kept properties of an item, read as text without building their values.
    fn kept(properties: &'a StixProperties) -> Self {
        let mut object = Self::default();
        if properties.is_empty() {
            return object;
        }
        // Kept properties were checked when the item was verified; text that does not
        // read (it cannot, short of a bug) exports as none kept, as `to_map` does.
        let read: Result<std::collections::BTreeMap<String, &serde_json::value::RawValue>, _> =
            serde_json::from_str(properties.as_str());
        if let Ok(read) = read {
            object.fields = read
                .into_iter()
                .map(|(name, value)| (Cow::Owned(name), Field::Kept(value)))
                .collect();
        }
        object
    }

    fn string(&mut self, name: &'a str, value: impl Into<Cow<'a, str>>) {
        self.fields
            .insert(Cow::Borrowed(name), Field::Str(value.into()));
    }

    fn json(&mut self, name: &'a str, text: String) {
        self.fields.insert(Cow::Borrowed(name), Field::Json(text));
    }

    fn has(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }

    /// Whether the property is there and is a string.
    fn is_string(&self, name: &str) -> bool {
        match self.fields.get(name) {
            Some(Field::Str(_)) => true,
            Some(Field::Kept(raw)) => raw.get().starts_with('"'),
            Some(Field::Json(text)) => text.starts_with('"'),
            None => false,
        }
    }

    /// A property's value, read from its text (for the few that are looked into).
    fn value(&self, name: &str) -> Option<Value> {
        match self.fields.get(name)? {
            Field::Str(text) => Some(Value::String(text.to_string())),
            Field::Kept(raw) => serde_json::from_str(raw.get()).ok(),
            Field::Json(text) => serde_json::from_str(text).ok(),
        }
    }

    /// What every exported object starts with: its type, spec version, id, `created`
    /// (kept unless absent or later than the version, written to the millisecond as
    /// `modified` is) and `modified` (the version). `created` is compared at its full
    /// precision: the version is written to the millisecond, so a `created` of
    /// `…00.123456Z` is later than a version of `…00.123Z`, and STIX asks that
    /// `modified` is not before `created`. Truncated to the millisecond, a `created`
    /// not later than the version stays so.
    fn head(&mut self, item: &'a Item, stix_type: &'a str) {
        let version = stix_timestamp(item.modified_ms);
        self.string("type", stix_type);
        self.string("spec_version", "2.1");
        self.string("id", item.id.as_str());
        let created = match self.fields.get("created") {
            Some(Field::Kept(raw)) => serde_json::from_str::<Cow<'_, str>>(raw.get())
                .ok()
                .and_then(|text| created_ms(&text, item.modified_ms)),
            _ => None,
        };
        match created {
            Some(created) => self.string("created", stix_timestamp(created)),
            None => self.string("created", version.clone()),
        }
        self.string("modified", version);
    }

    /// What every exported object ends with: `created_by_ref` (the origin's identity
    /// when none is kept), the tags as `labels`, and the item's TLP 2.0 marking.
    fn tail(&mut self, item: &Item, origin: Option<&str>) {
        if let Some(origin) = origin {
            if !self.is_string("created_by_ref") {
                self.string("created_by_ref", identity_id(origin));
            }
        }
        if !item.tags.is_empty() {
            self.json("labels", Value::from(item.tags.clone()).to_string());
        }
        let marking = tlp2_marking_id(item.tlp);
        self.json("object_marking_refs", format!("[\"{marking}\"]"));
    }

    /// The object as JSON text.
    fn into_text(self) -> String {
        let mut out = Vec::with_capacity(1024);
        out.push(b'{');
        for (n, (name, field)) in self.fields.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            push_json_string(&mut out, name);
            out.push(b':');
            match field {
                Field::Kept(raw) => out.extend_from_slice(raw.get().as_bytes()),
                Field::Str(text) => push_json_string(&mut out, text),
                Field::Json(text) => out.extend_from_slice(text.as_bytes()),
            }
        }
        out.push(b'}');
        // Every piece is UTF-8 text, so this cannot fail.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A JSON string as `serde_json` writes it.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Writing into a vector does not fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// A context object as STIX: its kept properties, then what the item carries (type, id,
/// version, marking, labels, references), which take precedence; `created` and
/// `created_by_ref` are filled in as for indicators.
fn context_to_stix(item: &Item, context: &ContextObject, origin: Option<&str>) -> String {
    let mut object = Exported::kept(&context.properties);
    object.head(item, context.object_type.as_str());
    // A report's `object_refs` are kept as published (validation holds its shared
    // references to exactly those they name); a relationship's ends are its refs.
    if let (IndicatorType::Relationship, [source, target]) =
        (context.object_type, &context.refs[..])
    {
        object.string("source_ref", source.as_str());
        object.string("target_ref", target.as_str());
    }
    object.tail(item, origin);
    object.into_text()
}

/// The STIX id of the `identity` object that stands for a node: the same on every node,
/// in version-4 form like the ids of items ([`ItemId::derived`]).
pub fn identity_id(node: &str) -> String {
    crate::model::origin_identity_id(node)
}

/// The STIX `identity` object of a node, for exports that carry its items.
pub fn identity(node: &str) -> Value {
    json!({
        "type": "identity",
        "spec_version": "2.1",
        "id": identity_id(node),
        "created": IDENTITY_CREATED,
        "modified": IDENTITY_CREATED,
        "name": node,
        "description": format!("Entente node {node}, origin of the indicators it signs"),
        "identity_class": "organization",
    })
}

/// The extension definition that declares the top-level properties of an exported
/// revocation (`x_entente_revocation_reason`, `x_entente_indicator_type`).
pub const REVOCATION_EXTENSION: &str = "extension-definition--f49b347c-4b7e-43d8-a2cb-a756b594e83e";

/// The identity that defines [`REVOCATION_EXTENSION`]: the Entente project.
const PROJECT_IDENTITY: &str = crate::model::PROJECT_IDENTITY_ID;

/// The objects an export that holds revocations carries besides them: the extension
/// definition of their properties and the identity that defines it.
pub fn revocation_extension() -> [Value; 2] {
    [
        json!({
            "type": "extension-definition",
            "spec_version": "2.1",
            "id": REVOCATION_EXTENSION,
            "created_by_ref": PROJECT_IDENTITY,
            "created": IDENTITY_CREATED,
            "modified": IDENTITY_CREATED,
            "name": "Entente revocation",
            "description": "Why an indicator was revoked by its origin, and the type of a revoked indicator exported without its pattern.",
            "schema": "The property x_entente_revocation_reason is a string: the reason the origin gave. The property x_entente_indicator_type is a string naming an Entente indicator type (ipv4, ipv6, cidr, domain, url, email, md5, sha1, sha256, stix-pattern).",
            "version": "1.0.0",
            "extension_types": ["toplevel-property-extension"],
            "extension_properties": [REVOCATION_REASON_PROPERTY, REVOKED_TYPE_PROPERTY],
        }),
        json!({
            "type": "identity",
            "spec_version": "2.1",
            "id": PROJECT_IDENTITY,
            "created": IDENTITY_CREATED,
            "modified": IDENTITY_CREATED,
            "name": "Entente",
            "description": "The Entente threat-indicator sharing node, which defines the extensions its exports use.",
            "identity_class": "organization",
        }),
    ]
}

/// `created` and `modified` of the identity objects a node writes: fixed, so that every
/// export gives the same object.
const IDENTITY_CREATED: &str = "2020-01-01T00:00:00.000Z";

/// The TLP 2.0 `marking-definition` object of a marking, as the OASIS TLP 2.0 extension
/// defines it.
pub fn tlp_marking_definition(tlp: Tlp) -> Value {
    let level = tlp.as_str().to_ascii_lowercase();
    json!({
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": tlp2_marking_id(tlp),
        "created": "2022-10-01T00:00:00.000Z",
        "name": format!("TLP:{}", tlp.as_str()),
        "extensions": {
            TLP2_EXTENSION: {
                "extension_type": "property-extension",
                "tlp_2_0": level,
            }
        },
    })
}

/// Nanoseconds since the epoch of an RFC 3339 timestamp, at the precision it is written
/// with.
fn timestamp_ns(text: &str) -> Option<i128> {
    time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp_nanos)
}

/// The kept properties of a context object revoked by this node (`entente revoke`): its
/// properties with `revoked: true` and the reason, the property that carries it declared
/// in `extensions` as a revocation's is ([`REVOCATION_EXTENSION`]; a kept `extensions`
/// that is not an object is left as it was). Refused when they no longer fit.
pub fn revoked_context_properties(
    properties: &StixProperties,
    reason: &str,
) -> Result<StixProperties, crate::model::ModelError> {
    let mut map = properties.to_map();
    map.insert("revoked".into(), Value::Bool(true));
    map.insert(REVOCATION_REASON_PROPERTY.into(), Value::from(reason));
    let extensions = map
        .entry("extensions")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(extensions) = extensions {
        extensions.insert(
            REVOCATION_EXTENSION.into(),
            json!({ "extension_type": "toplevel-property-extension" }),
        );
    }
    StixProperties::keep_for(crate::model::Holder::Context, &map)
}

/// Whether the export of `item` uses the revocation properties, so that the extension
/// definition that declares them ([`revocation_extension`]) goes with it: a revocation,
/// or a context object revoked by this node.
pub fn uses_revocation_extension(item: &Item) -> bool {
    match &item.kind {
        ItemKind::Revocation(_) => true,
        ItemKind::Context(context) => context.properties.as_str().contains(REVOCATION_EXTENSION),
        ItemKind::Indicator(_) => false,
    }
}

/// The `created` an export of `item` writes: its kept `created` to the millisecond, or
/// its version when it keeps none (or a later one). A new version this node builds of
/// an id it holds keeps it (`Engine::sign`), as STIX asks `created` not to change
/// between versions.
pub fn created_of(item: &Item) -> String {
    let properties = match &item.kind {
        ItemKind::Indicator(indicator) => Some(&indicator.properties),
        ItemKind::Revocation(revocation) => revocation.indicator.as_ref().map(|i| &i.properties),
        ItemKind::Context(context) => Some(&context.properties),
    };
    let created = properties
        .and_then(|properties| properties.string("created"))
        .and_then(|text| created_ms(&text, item.modified_ms));
    stix_timestamp(created.unwrap_or(item.modified_ms))
}

/// A kept `created` (`text`) in milliseconds, truncated, when it reads as a timestamp
/// and is not later than the version `modified_ms`.
fn created_ms(text: &str, modified_ms: i64) -> Option<i64> {
    let created = timestamp_ns(text)?;
    if created > i128::from(modified_ms) * 1_000_000 {
        return None;
    }
    i64::try_from(created.div_euclid(1_000_000)).ok()
}

/// A STIX timestamp (`2025-06-15T15:06:40.000Z`), clamped to the years 0000 to 9999.
fn stix_timestamp(ms: i64) -> String {
    const MIN_MS: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00.000Z
    const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    crate::util::rfc3339_ms(ms.clamp(MIN_MS, MAX_MS))
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{NOW, defaults, indicator, positions, revocation, values};
    use super::super::{InputFormat, ParsedInput, parse_input, parse_with_limit};
    use super::*;
    use IndicatorType::*;

    const ID_1: &str = "indicator--11111111-1111-4111-8111-111111111111";
    const ID_2: &str = "indicator--22222222-2222-4222-8222-222222222222";
    const ID_3: &str = "indicator--33333333-3333-4333-8333-333333333333";
    const ID_4: &str = "indicator--44444444-4444-4444-8444-444444444444";

    fn parse(bundle: &Value, tlp: Option<Tlp>) -> ParsedInput {
        parse_input(InputFormat::Stix, &bundle.to_string(), &defaults(tlp), NOW)
    }

    fn bundle(objects: Vec<Value>) -> Value {
        json!({
            "type": "bundle",
            "id": "bundle--44af6c39-c09b-49c5-9de2-394224b04982",
            "objects": objects,
        })
    }

    fn ioc(id: &str, pattern: &str, marking: &str) -> Value {
        json!({
            "type": "indicator",
            "spec_version": "2.1",
            "id": id,
            "created": "2025-01-01T00:00:00.000Z",
            "modified": "2025-01-02T00:00:00.000Z",
            "pattern": pattern,
            "pattern_type": "stix",
            "valid_from": "2025-01-01T00:00:00Z",
            "object_marking_refs": [marking],
        })
    }

    fn envelope(
        text: &str,
        max_values: usize,
        max_objects: usize,
    ) -> Result<(ParsedInput, Vec<super::super::EnvelopeEntry>), super::super::EnvelopeError> {
        super::super::parse_envelope(
            text.as_bytes(),
            max_values,
            max_objects,
            &defaults(None),
            NOW,
        )
    }

    /// A TAXII envelope is read from its own bytes, but must give exactly what the same
    /// objects give in a bundle file, with an entry per object for the status.
    #[test]
    fn an_envelope_reads_as_a_bundle_of_its_objects() {
        let mut escaped = ioc(
            ID_2,
            "[domain-name:value = 'b.example']",
            tlp2_marking_id(Tlp::Green),
        );
        escaped["x_note"] = json!("café \"quoted\" \u{1}");
        let objects = vec![
            ioc(
                ID_1,
                "[ipv4-addr:value = '198.51.100.7']",
                tlp2_marking_id(Tlp::Amber),
            ),
            escaped,
            json!({"type": "identity", "id": "identity--55555555-5555-4555-8555-555555555555", "modified": "2025-01-01T00:00:00.000Z", "name": "x"}),
            json!(42),
            ioc(
                ID_3,
                "[file:hashes.MD5 = 'not a hash']",
                tlp2_marking_id(Tlp::Clear),
            ),
            ioc(
                ID_4,
                "[url:value = 'http://c.example/x']",
                "marking-definition--00000000-0000-4000-8000-000000000000",
            ),
        ];
        let from_bundle = parse(&bundle(objects.clone()), None);
        // A key with an escape, members besides `objects`, and whitespace around.
        let text = format!(
            " {{\"more\": false, \"ne\\u0078t\": \"1\", \"objects\": {}}} ",
            Value::Array(objects.clone())
        );
        let (parsed, entries) = envelope(&text, 10_000, 100).unwrap();
        assert_eq!(parsed, from_bundle);
        assert_eq!(parsed.items.len(), 2, "{parsed:?}");
        assert_eq!(entries.len(), objects.len());
        assert_eq!(entries[0].id, ID_1);
        assert_eq!(
            entries[0].version.as_deref(),
            Some("2025-01-02T00:00:00.000Z")
        );
        assert_eq!(entries[0].kind.as_deref(), Some("indicator"));
        assert_eq!(entries[2].kind.as_deref(), Some("identity"));
        assert_eq!(entries[3], super::super::EnvelopeEntry::default());
        // Long ids and versions are cut in the status, on a character boundary.
        let long = format!("{}é", "x".repeat(199));
        let text = format!(
            r#"{{"objects":[{{"type":"indicator","id":"{long}é","modified":"{}"}}]}}"#,
            "é".repeat(70)
        );
        let (_, entries) = envelope(&text, 10_000, 100).unwrap();
        assert_eq!(entries[0].id, long);
        assert_eq!(entries[0].version.as_deref(), Some("é".repeat(64).as_str()));
    }

    #[test]
    fn envelopes_that_are_not_read() {
        use super::super::EnvelopeError::*;
        let one = ioc(
            ID_1,
            "[ipv4-addr:value = '198.51.100.7']",
            tlp2_marking_id(Tlp::Amber),
        )
        .to_string();
        type Expected = fn(&super::super::EnvelopeError) -> bool;
        let cases: Vec<(String, Expected)> = vec![
            ("[]".into(), |e| *e == NotAnEnvelope),
            ("\"objects\"".into(), |e| *e == NotAnEnvelope),
            ("{}".into(), |e| *e == NotAnEnvelope),
            (r#"{"objects":{}}"#.into(), |e| *e == NotAnEnvelope),
            (r#"{"objects":null}"#.into(), |e| *e == NotAnEnvelope),
            (r#"{"objects":[]}"#.into(), |e| *e == ObjectCount),
            (
                format!(r#"{{"objects":[{}]}}"#, [one.as_str(); 4].join(",")),
                |e| *e == ObjectCount,
            ),
            (
                format!(r#"{{"objects":[{one}],"objects":[{one}]}}"#),
                |e| matches!(e, Json(m) if m.contains("given twice")),
            ),
            (
                format!(r#"{{"more":1,"more":2,"objects":[{one}]}}"#),
                |e| matches!(e, Json(m) if m.contains("given twice")),
            ),
            (format!(r#"{{"objects":[{one}]}} x"#), |e| {
                matches!(e, Json(_))
            }),
            (format!(r#"{{"objects":[{one}]"#), |e| matches!(e, Json(_))),
            // Values are counted in every member, kept or not.
            (
                format!(
                    r#"{{"x":[{}],"objects":[{one}]}}"#,
                    vec!["[]"; 100].join(",")
                ),
                |e| matches!(e, Json(m) if m.contains("more JSON values")),
            ),
            (
                format!(
                    r#"{{"objects":[{one},{{"type":"indicator","x":[{}]}}]}}"#,
                    vec!["0"; 100].join(",")
                ),
                |e| matches!(e, Json(m) if m.contains("more JSON values")),
            ),
        ];
        for (text, expected) in cases {
            let error = envelope(&text, 60, 3).expect_err(&text);
            assert!(expected(&error), "{text}: {error:?}");
        }
        // Within both bounds, the same objects are read.
        let text = format!(r#"{{"objects":[{}]}}"#, [one.as_str(); 3].join(","));
        assert!(envelope(&text, 60, 3).is_ok());
    }

    /// A name given twice is refused at every depth of an envelope, in an element of
    /// `objects` that is not an object as well, and the values there are counted.
    #[test]
    fn an_envelope_refuses_a_name_given_twice_inside_an_array_element() {
        let one = ioc(
            ID_1,
            "[ipv4-addr:value = '198.51.100.7']",
            tlp2_marking_id(Tlp::Amber),
        )
        .to_string();
        let text = format!(r#"{{"objects":[[{{"a":1,"a":2}}],{one}]}}"#);
        let error = envelope(&text, 10_000, 100).expect_err("a name given twice is read");
        assert!(
            matches!(&error, super::super::EnvelopeError::Json(m) if m.contains("given twice")),
            "{error:?}"
        );
        let text = format!(r#"{{"objects":[[{}],{one}]}}"#, vec!["0"; 100].join(","));
        let error = envelope(&text, 60, 100).expect_err("values past the budget are read");
        assert!(
            matches!(&error, super::super::EnvelopeError::Json(m) if m.contains("more JSON values")),
            "{error:?}"
        );
    }

    const JAN_1: i64 = 1_735_689_600_000;
    const JAN_2: i64 = 1_735_776_000_000;

    #[test]
    fn well_known_ids_match_the_levels() {
        for tlp in Tlp::ALL {
            assert_eq!(well_known_tlp(tlp2_marking_id(tlp)), Some(tlp));
        }
        let green_v1 = "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da";
        assert_eq!(well_known_tlp(green_v1), Some(Tlp::Green));
        assert_eq!(
            well_known_tlp("marking-definition--00000000-0000-4000-8000-000000000000"),
            None
        );
    }

    #[test]
    fn tlp2_bundle_becomes_items() {
        let mut first = ioc(
            ID_1,
            "[ipv4-addr:value = '198.51.100.7']",
            tlp2_marking_id(Tlp::Amber),
        );
        first["labels"] = json!(["source:honeypot", "scanner"]);
        first["description"] = json!("ssh brute force");
        first["confidence"] = json!(85);
        first["kill_chain_phases"] =
            json!([{"kill_chain_name": "mitre-attack", "phase_name": "credential-access"}]);
        first["valid_until"] = json!("2026-01-01T00:00:00Z");
        let objects = vec![
            json!({
                "type": "marking-definition",
                "spec_version": "2.1",
                "id": tlp2_marking_id(Tlp::Amber),
                "created": "2022-10-01T00:00:00.000Z",
                "name": "TLP:AMBER",
                "extensions": {TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": "amber"}},
            }),
            json!({"type": "location", "spec_version": "2.1", "id": "location--f690c992-8e7d-4b9a-9303-3312616c0220", "region": "europe"}),
            first,
            ioc(
                ID_2,
                "[domain-name:value = 'Evil.Example.']",
                tlp2_marking_id(Tlp::AmberStrict),
            ),
            ioc(
                ID_3,
                "[file:hashes.'SHA-256' = 'E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855']",
                tlp2_marking_id(Tlp::Clear),
            ),
        ];
        let parsed = parse(&bundle(objects), None);
        assert_eq!(parsed.errors, []);
        assert_eq!(
            values(&parsed),
            [
                (Ipv4, "198.51.100.7".into()),
                (Domain, "evil.example".into()),
                (
                    Sha256,
                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into()
                ),
            ]
        );
        let tlps: Vec<Tlp> = parsed.items.iter().map(|i| i.tlp).collect();
        assert_eq!(tlps, [Tlp::Amber, Tlp::AmberStrict, Tlp::Clear]);
        let ids: Vec<&str> = parsed.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, [ID_1, ID_2, ID_3]);
        let item = &parsed.items[0];
        assert_eq!(item.tags, ["source:honeypot", "scanner"]);
        assert_eq!(item.modified_ms, JAN_2);
        let i = indicator(item);
        assert_eq!(i.description, "ssh brute force");
        assert_eq!(i.confidence, 85);
        assert_eq!(i.kill_chain_phases, ["mitre-attack:credential-access"]);
        assert_eq!(i.valid_from_ms, JAN_1);
        assert_eq!(i.valid_until_ms, Some(1_767_225_600_000));
        assert_eq!(indicator(&parsed.items[1]).valid_until_ms, None);
    }

    #[test]
    fn tlp1_markings_and_bundle_definitions_are_read() {
        let custom = "marking-definition--826578e1-40ad-459f-bc73-ede076f81f37";
        let custom_v1 = "marking-definition--0b4c9b62-7a43-4b4f-a3e9-000000000001";
        let objects = vec![
            json!({"type": "marking-definition", "id": custom, "name": "TLP:AMBER+STRICT",
                   "extensions": {TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": "amber+strict"}}}),
            json!({"type": "marking-definition", "id": custom_v1, "definition_type": "tlp",
                   "definition": {"tlp": "white"}}),
            ioc(
                ID_1,
                "[ipv4-addr:value = '1.2.3.4']",
                "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
            ),
            ioc(
                ID_2,
                "[ipv4-addr:value = '1.2.3.5']",
                "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
            ),
            ioc(ID_3, "[ipv4-addr:value = '1.2.3.6']", custom),
            ioc(
                "indicator--44444444-4444-4444-8444-444444444444",
                "[ipv4-addr:value = '1.2.3.7']",
                custom_v1,
            ),
        ];
        let parsed = parse(&bundle(objects), None);
        assert_eq!(parsed.errors, []);
        let tlps: Vec<Tlp> = parsed.items.iter().map(|i| i.tlp).collect();
        assert_eq!(tlps, [Tlp::Clear, Tlp::Red, Tlp::AmberStrict, Tlp::Clear]);
    }

    #[test]
    fn markings_unknown_missing_or_conflicting() {
        let unknown = "marking-definition--00000000-0000-4000-8000-000000000000";
        let mut none = ioc(ID_1, "[ipv4-addr:value = '1.2.3.4']", unknown);
        none["object_marking_refs"] = json!([]);
        let mut two = ioc(ID_2, "[ipv4-addr:value = '1.2.3.5']", unknown);
        two["object_marking_refs"] =
            json!([tlp2_marking_id(Tlp::Green), tlp2_marking_id(Tlp::Red)]);
        let mut same_twice = ioc(ID_3, "[ipv4-addr:value = '1.2.3.6']", unknown);
        same_twice["object_marking_refs"] = json!([
            tlp2_marking_id(Tlp::Green),
            "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
        ]);
        let objects = vec![
            none,
            two,
            same_twice,
            ioc(ID_4, "[ipv4-addr:value = '1.2.3.7']", unknown),
        ];
        let parsed = parse(&bundle(objects.clone()), None);
        assert_eq!(
            positions(&parsed),
            [
                format!("objects[0] ({ID_1})"),
                format!("objects[1] ({ID_2})"),
                format!("objects[3] ({ID_4})"),
            ]
        );
        assert_eq!(
            parsed.errors[0].reason,
            "no TLP marking (give one in the input or with --tlp)"
        );
        assert_eq!(
            parsed.errors[1].reason,
            "more than one TLP marking (TLP:GREEN, TLP:RED)"
        );
        // A marking that cannot be read is never replaced by the default.
        assert_eq!(
            parsed.errors[2].reason,
            format!(
                "object_marking_refs references {unknown}, which is neither a marking \
                 definition in the bundle nor a known TLP marking definition"
            )
        );
        assert_eq!(parsed.items.len(), 1);
        assert_eq!(parsed.items[0].tlp, Tlp::Green);

        let parsed = parse(&bundle(objects), Some(Tlp::Amber));
        let tlps: Vec<Tlp> = parsed.items.iter().map(|i| i.tlp).collect();
        assert_eq!(tlps, [Tlp::Amber, Tlp::Green]);
        assert_eq!(parsed.errors.len(), 2);
    }

    #[test]
    fn revoked_indicator_becomes_a_revocation() {
        let mut revoked = ioc(
            ID_1,
            "[url:value = 'http://x.example/']",
            tlp2_marking_id(Tlp::Red),
        );
        revoked["revoked"] = json!(true);
        revoked["labels"] = json!(["pii"]);
        let parsed = parse(&bundle(vec![revoked]), None);
        assert_eq!(parsed.errors, []);
        let item = &parsed.items[0];
        assert_eq!(item.id.as_str(), ID_1);
        assert_eq!(item.tlp, Tlp::Red);
        assert_eq!(item.tags, ["pii"]);
        assert_eq!(item.modified_ms, JAN_2);
        assert_eq!(
            revocation(item),
            &Revocation {
                indicator_type: Url,
                reason: "revoked in STIX input".into(),
                indicator: Some(Box::new(Indicator {
                    indicator_type: Url,
                    value: "http://x.example/".into(),
                    description: String::new(),
                    confidence: 0,
                    kill_chain_phases: Vec::new(),
                    valid_from_ms: JAN_1,
                    valid_until_ms: None,
                    properties: StixProperties::keep(
                        json!({"created": "2025-01-01T00:00:00.000Z"})
                            .as_object()
                            .expect("an object")
                    )
                    .expect("kept"),
                })),
            }
        );
    }

    #[test]
    fn one_id_with_two_values_refuses_the_input() {
        let green = tlp2_marking_id(Tlp::Green);
        let objects = vec![
            ioc(ID_1, "[ipv4-addr:value = '192.0.2.1']", green),
            ioc(ID_2, "[domain-name:value = 'ok.example']", green),
            ioc(ID_1, "[ipv4-addr:value = '192.0.2.2']", green),
        ];
        let parsed = parse(&bundle(objects), None);
        assert!(parsed.items.is_empty(), "{:?}", parsed.items);
        assert_eq!(positions(&parsed), ["input"]);
        let reason = &parsed.errors[0].reason;
        assert!(reason.contains(ID_1), "{reason}");
        assert!(reason.contains("objects[0] and objects[2]"), "{reason}");

        // The same id with the same value (two versions of one indicator) still parses,
        // and so do two spellings of one value.
        let mut later = ioc(ID_1, "[ipv4-addr:value = '::ffff:192.0.2.1']", green);
        later["modified"] = json!("2025-01-03T00:00:00.000Z");
        let objects = vec![ioc(ID_1, "[ipv4-addr:value = '192.0.2.1']", green), later];
        let parsed = parse(&bundle(objects), None);
        assert_eq!(parsed.errors, []);
        assert_eq!(parsed.items.len(), 2);
    }

    #[test]
    fn input_edges_in_patterns() {
        let green = tlp2_marking_id(Tlp::Green);
        let objects = vec![
            ioc(ID_1, "[ipv6-addr:value = '::ffff:192.0.2.1']", green),
            ioc(ID_2, "[ipv4-addr:value = '0.0.0.0/0']", green),
            ioc(
                ID_3,
                "[url:value = 'https://user:pass@host.example/']",
                green,
            ),
            ioc(ID_4, "[email-addr:value = 'mailto:a@b.example']", green),
        ];
        let parsed = parse(&bundle(objects), None);
        assert_eq!(
            values(&parsed),
            [(Ipv4, "192.0.2.1".into()), (Email, "a@b.example".into())]
        );
        assert_eq!(
            positions(&parsed),
            [
                format!("objects[1] ({ID_2})"),
                format!("objects[2] ({ID_3})")
            ]
        );
        assert!(parsed.errors[0].reason.contains("too broad"));
        assert!(parsed.errors[1].reason.contains("user information"));

        let mut revoked = ioc(ID_1, "[ipv6-addr:value = '::ffff:192.0.2.1']", green);
        revoked["revoked"] = json!(true);
        let parsed = parse(&bundle(vec![revoked]), None);
        assert_eq!(revocation(&parsed.items[0]).indicator_type, Ipv4);

        // A control character in a single comparison's value is refused, not trimmed.
        for pattern in [
            "[ipv4-addr:value = '1.2.3.4\n']",
            "[domain-name:value = 'a.example\t']",
        ] {
            let parsed = parse(&bundle(vec![ioc(ID_1, pattern, green)]), None);
            assert!(parsed.items.is_empty(), "{pattern}: {:?}", parsed.items);
            assert!(
                parsed.errors[0].reason.contains("control character"),
                "{:?}",
                parsed.errors
            );
        }
    }

    #[test]
    fn complex_and_simple_patterns() {
        let green = tlp2_marking_id(Tlp::Green);
        let complex = "[ipv4-addr:value = '1.2.3.4' OR domain-name:value = 'x.example']";
        let objects = vec![
            ioc(ID_1, complex, green),
            ioc(ID_2, "[ipv4-addr:value = '10.1.2.3/8']", green),
            ioc(ID_3, "[email-addr:value = 'O\\'Brien@Example.com']", green),
        ];
        let parsed = parse(&bundle(objects), None);
        assert_eq!(parsed.errors, []);
        assert_eq!(
            values(&parsed),
            [
                (StixPattern, complex.into()),
                (Cidr, "10.0.0.0/8".into()),
                (Email, "o'brien@example.com".into()),
            ]
        );
    }

    #[test]
    fn bad_objects_are_reported_and_the_rest_parse() {
        let green = tlp2_marking_id(Tlp::Green);
        let good = ioc(ID_1, "[ipv4-addr:value = '1.2.3.4']", green);
        let mut sigma = ioc(ID_2, "title: x", green);
        sigma["pattern_type"] = json!("sigma");
        let mut bad_confidence = ioc(ID_3, "[ipv4-addr:value = '1.2.3.5']", green);
        bad_confidence["confidence"] = json!(101);
        let mut bad_until = ioc(
            "indicator--55555555-5555-4555-8555-555555555555",
            "[ipv4-addr:value = '1.2.3.6']",
            green,
        );
        bad_until["valid_until"] = json!("2024-01-01T00:00:00Z");
        let mut bad_labels = ioc(
            "indicator--66666666-6666-4666-8666-666666666666",
            "[ipv4-addr:value = '1.2.3.7']",
            green,
        );
        bad_labels["labels"] = json!([1, 2]);
        let mut no_pattern = ioc("indicator--77777777-7777-4777-8777-777777777777", "", green);
        if let Some(object) = no_pattern.as_object_mut() {
            object.remove("pattern");
        }
        let objects = vec![
            ioc(
                "indicator--not-a-uuid",
                "[ipv4-addr:value = '1.2.3.4']",
                green,
            ),
            ioc(ID_1, "[ipv4-addr:value = '1.2.3.256']", green),
            json!(42),
            json!({"id": "x"}),
            sigma,
            ioc(
                ID_3,
                "[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427']",
                green,
            ),
            bad_confidence,
            bad_until,
            bad_labels,
            no_pattern,
            // A context object without a marking is refused like an indicator.
            json!({"type": "malware", "id": "malware--fdd60b30-b67c-41e3-b0b9-f01faf20d111"}),
            // Objects of types no node shares are skipped.
            json!({"type": "location", "id": "location--fdd60b30-b67c-41e3-b0b9-f01faf20d111"}),
            good,
        ];
        let parsed = parse(&bundle(objects), None);
        assert_eq!(values(&parsed), [(Ipv4, "1.2.3.4".into())]);
        assert_eq!(
            positions(&parsed),
            [
                "objects[0] (indicator--not-a-uuid)",
                &format!("objects[1] ({ID_1})"),
                "objects[2]",
                "objects[3] (x)",
                &format!("objects[4] ({ID_2})"),
                &format!("objects[5] ({ID_3})"),
                &format!("objects[6] ({ID_3})"),
                "objects[7] (indicator--55555555-5555-4555-8555-555555555555)",
                "objects[8] (indicator--66666666-6666-4666-8666-666666666666)",
                "objects[9] (indicator--77777777-7777-4777-8777-777777777777)",
                "objects[10] (malware--fdd60b30-b67c-41e3-b0b9-f01faf20d111)",
            ]
        );
        let reasons: Vec<&str> = parsed.errors.iter().map(|e| e.reason.as_str()).collect();
        assert!(reasons[0].contains("invalid item id"));
        assert!(reasons[1].contains("octet 4 (256) is above 255"));
        assert_eq!(reasons[2], "not a JSON object");
        assert!(reasons[3].contains("no \"type\""));
        assert!(reasons[4].contains("pattern_type \"sigma\""));
        assert!(reasons[5].ends_with("md5 has 32 hex digits, got 31"));
        assert!(reasons[6].contains("confidence"));
        assert!(reasons[7].contains("valid_until"));
        assert!(reasons[8].contains("labels"));
        assert_eq!(reasons[9], "no pattern");
    }

    #[test]
    fn whole_input_errors() {
        for (text, reason) in [
            (
                "{\"type\": \"bundle\", \"objects\": [",
                "not a valid STIX bundle",
            ),
            ("[]", "not a valid STIX bundle"),
            ("{\"type\": \"indicator\"}", "expected a STIX 2.1 bundle"),
            ("{\"type\": \"bundle\"}", "no \"objects\""),
            (
                "{\"type\": \"bundle\", \"objects\": {}}",
                "not a valid STIX bundle",
            ),
        ] {
            let parsed = parse_input(InputFormat::Stix, text, &defaults(Some(Tlp::Green)), NOW);
            assert!(parsed.items.is_empty());
            assert_eq!(parsed.errors.len(), 1, "{text}");
            assert!(
                parsed.errors[0].reason.contains(reason),
                "{text}: {:?}",
                parsed.errors
            );
        }
        let deep = format!(
            "{{\"type\": \"bundle\", \"objects\": [{{\"labels\": {}{}}}]}}",
            "[".repeat(1000),
            "]".repeat(1000)
        );
        let parsed = parse_input(InputFormat::Stix, &deep, &defaults(Some(Tlp::Green)), NOW);
        assert!(parsed.items.is_empty());
        assert!(
            parsed.errors[0].reason.contains("recursion limit"),
            "{:?}",
            parsed.errors
        );
        assert!(parsed.errors[0].position.starts_with("line 1 column"));
        // Every property is read (an indicator keeps them all), so the same limit holds
        // in custom ones.
        let custom = deep.replace("labels", "x_custom");
        let parsed = parse_input(InputFormat::Stix, &custom, &defaults(Some(Tlp::Green)), NOW);
        assert!(parsed.items.is_empty());
        assert!(parsed.errors[0].reason.contains("recursion limit"));
    }

    #[test]
    fn too_many_objects() {
        let green = tlp2_marking_id(Tlp::Green);
        let objects = vec![
            ioc(ID_1, "[ipv4-addr:value = '1.2.3.4']", green),
            ioc(ID_2, "[ipv4-addr:value = '1.2.3.5']", green),
        ];
        let text = bundle(objects).to_string();
        let d = defaults(None);
        assert_eq!(
            parse_with_limit(InputFormat::Stix, &text, &d, NOW, 2)
                .items
                .len(),
            2
        );
        let parsed = parse_with_limit(InputFormat::Stix, &text, &d, NOW, 1);
        assert!(parsed.items.is_empty());
        assert_eq!(positions(&parsed), ["input"]);
    }

    #[test]
    fn real_bundles_from_the_stix_validator_parse() {
        let text = include_str!("../../tests/fixtures/stix/indicators-for-C2-with-COA.json");
        let parsed = parse_input(InputFormat::Stix, text, &defaults(Some(Tlp::Green)), NOW);
        assert_eq!(parsed.errors, []);
        // The identity, the malware, the course of action and the relationships from the
        // indicators to the malware and from the course of action to it are read too.
        let context: Vec<IndicatorType> = parsed
            .items
            .iter()
            .filter(|i| i.indicator_type().is_context())
            .map(Item::indicator_type)
            .collect();
        assert_eq!(
            context,
            [
                Identity,
                Malware,
                CourseOfAction,
                Relationship,
                Relationship,
                Relationship
            ]
        );
        let parsed = ParsedInput {
            items: parsed
                .items
                .into_iter()
                .filter(|i| !i.indicator_type().is_context())
                .collect(),
            errors: parsed.errors,
        };
        assert_eq!(
            values(&parsed),
            [
                (Ipv4, "10.0.0.0".into()),
                (
                    Sha256,
                    "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c".into()
                ),
            ]
        );
        assert_eq!(indicator(&parsed.items[0]).description, "Test description.");
        assert_eq!(parsed.items[0].modified_ms, 1_399_539_600_000);

        let text = include_str!(
            "../../tests/fixtures/stix/malicious-email-indicator-with-attachment.json"
        );
        let parsed = parse_input(InputFormat::Stix, text, &defaults(Some(Tlp::Green)), NOW);
        assert_eq!(parsed.errors, []);
        let (context, indicators): (Vec<&Item>, Vec<&Item>) = parsed
            .items
            .iter()
            .partition(|item| item.indicator_type().is_context());
        assert_eq!(
            context.len(),
            4,
            "the identity, the attack pattern and two relationships"
        );
        assert_eq!(indicators.len(), 2);
        assert!(
            indicators
                .iter()
                .all(|item| item.indicator_type() == StixPattern)
        );
        assert_eq!(
            indicators[0].value(),
            Some("[email-message:subject MATCHES '^[IMPORTANT] Please Review Before']")
        );
    }

    fn sample(kind: ItemKind) -> Item {
        Item {
            id: ItemId::parse(ID_1).expect("valid id"),
            modified_ms: JAN_2,
            tlp: Tlp::AmberStrict,
            tags: vec!["pii".into()],
            kind,
        }
    }

    #[test]
    fn to_stix_writes_an_indicator() {
        let item = sample(ItemKind::Indicator(Indicator {
            indicator_type: Url,
            value: "http://x.example/it's".into(),
            description: "phishing".into(),
            confidence: 70,
            kill_chain_phases: vec!["mitre-attack:initial-access".into()],
            valid_from_ms: JAN_1,
            valid_until_ms: Some(JAN_2 + 1),
            properties: crate::model::StixProperties::none(),
        }));
        let object = to_stix(&item);
        assert_eq!(
            object,
            json!({
                "type": "indicator",
                "spec_version": "2.1",
                "id": ID_1,
                "name": "http://x.example/it's",
                "created": "2025-01-02T00:00:00.000Z",
                "modified": "2025-01-02T00:00:00.000Z",
                "pattern": "[url:value = 'http://x.example/it\\'s']",
                "pattern_type": "stix",
                "pattern_version": "2.1",
                "valid_from": "2025-01-01T00:00:00.000Z",
                "valid_until": "2025-01-02T00:00:00.001Z",
                "description": "phishing",
                "confidence": 70,
                "kill_chain_phases": [{"kill_chain_name": "mitre-attack", "phase_name": "initial-access"}],
                "labels": ["pii"],
                "object_marking_refs": ["marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003"],
            })
        );
        let parsed = parse(&bundle(vec![object.clone()]), None);
        assert_eq!(parsed.errors, []);
        assert_eq!(to_stix(&parsed.items[0]), object);
    }

    #[test]
    fn to_stix_writes_a_revocation() {
        let item = sample(ItemKind::Revocation(Revocation {
            indicator_type: Sha1,
            reason: "false positive".into(),
            indicator: None,
        }));
        let object = to_stix(&item);
        assert_eq!(object["revoked"], json!(true));
        assert_eq!(object["x_entente_indicator_type"], json!("sha1"));
        assert_eq!(
            object["x_entente_revocation_reason"],
            json!("false positive")
        );
        assert!(object.get("pattern").is_none());
        let parsed = parse(&bundle(vec![object]), None);
        assert_eq!(parsed.errors, []);
        assert_eq!(parsed.items, [item]);
    }

    #[test]
    fn round_trips_every_type() {
        let values = [
            (Ipv4, "1.2.3.4"),
            (Ipv6, "2001:db8::1"),
            (Cidr, "10.0.0.0/8"),
            (Cidr, "2001:db8::/32"),
            (Domain, "example.com"),
            (Url, "https://x.example/a\\b?c='d'"),
            (Email, "o'brien@example.com"),
            (Md5, "d41d8cd98f00b204e9800998ecf8427e"),
            (Sha1, "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            (
                Sha256,
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (StixPattern, "[file:name = 'a.exe' AND file:size > 10]"),
        ];
        for (ty, value) in values {
            let item = sample(ItemKind::Indicator(Indicator {
                indicator_type: ty,
                value: value.into(),
                description: String::new(),
                confidence: 0,
                kill_chain_phases: Vec::new(),
                valid_from_ms: JAN_1,
                valid_until_ms: None,
                properties: crate::model::StixProperties::none(),
            }));
            let exported = to_stix(&item);
            let parsed = parse(&bundle(vec![exported.clone()]), None);
            assert_eq!(parsed.errors, [], "{ty}");
            let [again] = &parsed.items[..] else {
                panic!("{ty}: {:?}", parsed.items)
            };
            assert_eq!(again.id, item.id, "{ty}");
            assert_eq!(again.tlp, item.tlp, "{ty}");
            assert_eq!(again.tags, item.tags, "{ty}");
            assert_eq!(again.value(), item.value(), "{ty}");
            assert_eq!(again.indicator_type(), item.indicator_type(), "{ty}");
            // What export fills in (name, description, created) is kept on import, so
            // a second export gives the same object.
            assert_eq!(to_stix(again), exported, "{ty}");
        }
    }

    #[test]
    fn timestamps_are_clamped() {
        assert_eq!(stix_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(stix_timestamp(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(stix_timestamp(i64::MIN), "0000-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_name_given_twice_at_any_depth_refuses_the_input() {
        let amber = "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82";
        let clear = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487";
        let object = |granular: &str| {
            format!(
                r#"{{"type":"bundle","id":"bundle--44af6c39-c09b-49c5-9de2-394224b04982","objects":[{{"type":"indicator","spec_version":"2.1","id":"{ID_1}","created":"2025-01-01T00:00:00.000Z","modified":"2025-01-01T00:00:00.000Z","pattern":"[ipv4-addr:value = '1.2.3.4']","pattern_type":"stix","valid_from":"2025-01-01T00:00:00Z","object_marking_refs":["{clear}"],"granular_markings":[{granular}]}}]}}"#
            )
        };
        // The pattern marked AMBER for a reader that takes the first name, CLEAR for one
        // that takes the last: refused, not published under either.
        let twice = object(&format!(
            r#"{{"selectors":["pattern"],"marking_ref":"{amber}","marking_ref":"{clear}"}}"#
        ));
        let parsed = parse_input(InputFormat::Stix, &twice, &defaults(None), NOW);
        assert!(parsed.items.is_empty(), "{parsed:?}");
        assert!(
            parsed.errors[0].reason.contains("given twice"),
            "{parsed:?}"
        );
        // Once: the pattern's AMBER raises the indicator.
        let once = object(&format!(
            r#"{{"selectors":["pattern"],"marking_ref":"{amber}"}}"#
        ));
        let parsed = parse_input(InputFormat::Stix, &once, &defaults(None), NOW);
        assert_eq!(parsed.items.len(), 1, "{parsed:?}");
        assert_eq!(parsed.items[0].tlp, Tlp::Amber);
    }

    /// The exported text is the object `serde_json` would write (names sorted, each
    /// once, no spaces), for every object of the real bundles, as revocations with and
    /// without their indicator, and with kept properties whose names need escaping.
    #[test]
    fn exported_text_is_the_objects_own_text() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stix");
        let mut items = Vec::new();
        for entry in std::fs::read_dir(dir).expect("fixtures") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).expect("fixture");
                let parsed =
                    parse_input(InputFormat::Stix, &text, &defaults(Some(Tlp::Green)), NOW);
                items.extend(parsed.items);
            }
        }
        assert!(items.len() > 40, "{} items", items.len());
        let escaped = StixProperties::keep(
            json!({"name": "quote \" and \\u{1}", "x_a\"b": [1, 2.5, {"z": null, "a": "\n"}],
                   "extensions": {"x": {"extension_type": "property-extension"}}})
            .as_object()
            .expect("object"),
        )
        .expect("kept");
        let mut more = Vec::new();
        for item in &items {
            if let ItemKind::Indicator(indicator) = &item.kind {
                let mut indicator = indicator.clone();
                for (with, kept) in [(true, &indicator.properties.clone()), (false, &escaped)] {
                    indicator.properties = kept.clone();
                    indicator.confidence = 70;
                    indicator.kill_chain_phases = vec!["lockheed:delivery".into()];
                    more.push(Item {
                        kind: ItemKind::Revocation(Revocation {
                            indicator_type: indicator.indicator_type,
                            reason: "wrong \"host\"".into(),
                            indicator: with.then(|| Box::new(indicator.clone())),
                        }),
                        tags: vec!["b".into(), "a".into()],
                        ..item.clone()
                    });
                    more.push(Item {
                        kind: ItemKind::Indicator(indicator.clone()),
                        ..item.clone()
                    });
                }
            }
        }
        items.extend(more);
        for item in &items {
            for origin in [None, Some("hq.example")] {
                let text = write_stix_from(item, origin);
                let object: Value = serde_json::from_str(&text).expect("JSON");
                assert_eq!(object.to_string(), text);
                assert_eq!(to_stix_from(item, origin), object);
                assert_eq!(object["id"], json!(item.id.as_str()));
            }
        }
    }

    /// A revocation whose indicator keeps an `extensions` that is not an object exports
    /// it as kept, and declares nothing in it.
    #[test]
    fn a_kept_extensions_that_is_not_an_object_is_exported_as_kept() {
        for kept in [r#""x""#, "[1,2]", "null", "7"] {
            let text = format!(
                r#"{{"type":"bundle","id":"bundle--44af6c39-c09b-49c5-9de2-394224b04982","objects":[{{"type":"indicator","spec_version":"2.1","id":"{ID_1}","created":"2025-01-01T00:00:00.000Z","modified":"2025-01-01T00:00:00.000Z","pattern":"[ipv4-addr:value = '1.2.3.4']","pattern_type":"stix","valid_from":"2025-01-01T00:00:00Z","revoked":true,"extensions":{kept}}}]}}"#
            );
            let parsed = parse_input(InputFormat::Stix, &text, &defaults(Some(Tlp::Green)), NOW);
            assert_eq!(parsed.items.len(), 1, "{parsed:?}");
            let item = &parsed.items[0];
            assert!(matches!(item.kind, ItemKind::Revocation(_)), "{item:?}");
            let exported = write_stix_from(item, Some("hq.example"));
            let object: Value = serde_json::from_str(&exported).expect("JSON");
            let expected: Value = serde_json::from_str(kept).expect("kept");
            assert_eq!(object["extensions"], expected, "{exported}");
            assert_eq!(object.to_string(), exported);
        }
    }

    #[test]
    fn references_are_exported_in_the_case_ids_are() {
        let green = tlp2_marking_id(Tlp::Green);
        let report = json!({
            "type": "report", "spec_version": "2.1",
            "id": "report--5e5e0000-0000-4000-8000-00000000000a",
            "created": "2025-01-01T00:00:00.000Z", "modified": "2025-01-01T00:00:00.000Z",
            "name": "R", "published": "2025-01-01T00:00:00Z",
            "object_refs": [ID_1.to_ascii_uppercase(), "not-an-id"],
            "created_by_ref": "IDENTITY--5E5E0000-0000-4000-8000-00000000000B",
            "object_marking_refs": [green],
        });
        let objects = vec![ioc(ID_1, "[ipv4-addr:value = '1.2.3.4']", green), report];
        let parsed = parse(&bundle(objects), None);
        assert_eq!(parsed.errors, []);
        let report = parsed
            .items
            .iter()
            .find(|i| i.id.as_str().starts_with("report--"))
            .expect("the report is read");
        let exported: Value =
            serde_json::from_str(&write_stix_from(report, Some("hq.example"))).expect("JSON");
        assert_eq!(
            exported["object_refs"],
            json!([ID_1, "not-an-id"]),
            "{exported}"
        );
        assert_eq!(
            exported["created_by_ref"],
            json!("identity--5e5e0000-0000-4000-8000-00000000000b")
        );
    }
}
