//! The STIX properties an indicator keeps besides the fields the model reads: `name`,
//! `indicator_types`, `created`, `created_by_ref`, `external_references`, custom `x_`
//! properties and so on. They travel inside the signed item as one canonical JSON object
//! (keys sorted, no whitespace), so every node that verifies the item holds the same text
//! and gives the same object back on export.

use serde_json::{Map, Value};

use super::item::ModelError;

/// Most bytes of kept properties on one indicator (the canonical JSON text).
pub const MAX_PROPERTIES_BYTES: usize = 16 * 1024;

/// Deepest nesting of arrays and objects inside the kept properties.
const MAX_DEPTH: usize = 16;

/// Properties the model carries in its own fields, or that export writes itself. They are
/// never kept: on export the model's value is the only one, so a kept copy could neither
/// contradict the marking nor the pattern that policy judged.
pub const MODELLED: [&str; 17] = [
    "type",
    "spec_version",
    "id",
    "modified",
    "revoked",
    "pattern",
    "pattern_type",
    "valid_from",
    "valid_until",
    "labels",
    "confidence",
    "kill_chain_phases",
    "object_marking_refs",
    "granular_markings",
    "x_entente_indicator_type",
    "x_entente_revocation_reason",
    "x_entente_provenance",
];

/// Properties a context object carries in its own fields: a relationship's ends among
/// them. A report keeps its `object_refs` as written (they may name objects of types no
/// node shares); its references to shared types are also in its own field, and must be
/// exactly those of `object_refs` ([`crate::model::Item::validate`]).
pub const CONTEXT_MODELLED: [&str; 10] = [
    "type",
    "spec_version",
    "id",
    "modified",
    "labels",
    "object_marking_refs",
    "granular_markings",
    "source_ref",
    "target_ref",
    "x_entente_provenance",
];

/// Whose properties are kept: an indicator's or a context object's (they model
/// different fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// An indicator (or the indicator a revocation carries).
    Indicator,
    /// A context object.
    Context,
}

impl Holder {
    /// Whether `key` (with `value`) is kept as a property: not carried by the holder
    /// itself ([`StixProperties::keep_for`] keeps exactly these).
    pub(crate) fn keeps(self, key: &str, value: &Value) -> bool {
        !self.models(key, value)
    }

    /// Whether `key` (with `value`) is carried by the holder itself.
    fn models(self, key: &str, value: &Value) -> bool {
        match self {
            Holder::Indicator => {
                (MODELLED.contains(&key) && !given_as_default(key, value)) || described(key, value)
            }
            Holder::Context => CONTEXT_MODELLED.contains(&key),
        }
    }
}

/// STIX properties kept as canonical JSON text; empty when there are none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StixProperties(String);

impl StixProperties {
    /// No kept properties.
    pub fn none() -> Self {
        Self(String::new())
    }

    /// Keeps every property of `object` that the model does not carry itself, or says
    /// why they cannot be kept (too large, too deep).
    pub fn keep(object: &Map<String, Value>) -> Result<Self, ModelError> {
        Self::keep_for(Holder::Indicator, object)
    }

    /// [`Self::keep`] for either kind of holder.
    pub fn keep_for(holder: Holder, object: &Map<String, Value>) -> Result<Self, ModelError> {
        let kept: Map<String, Value> = object
            .iter()
            .filter(|(key, value)| !holder.models(key, value))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Self::from_map(kept)
    }

    /// [`Self::keep_for`] of a map the caller gives up, without copying it.
    pub fn keep_owned(holder: Holder, mut object: Map<String, Value>) -> Result<Self, ModelError> {
        object.retain(|key, value| !holder.models(key, value));
        Self::from_map(object)
    }

    fn from_map(map: Map<String, Value>) -> Result<Self, ModelError> {
        if map.is_empty() {
            return Ok(Self::none());
        }
        let mut value = Value::Object(map);
        if depth(&value) > MAX_DEPTH {
            return Err(problem(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        // Keys sorted at every level, so this text is canonical.
        value.sort_all_objects();
        // Written straight into a buffer (`Display` would go through the formatter).
        let text = serde_json::to_string(&value)
            .map_err(|e| problem(format!("not writable as JSON: {e}")))?;
        if text.len() > MAX_PROPERTIES_BYTES {
            return Err(problem(format!(
                "{} bytes of STIX properties, at most {MAX_PROPERTIES_BYTES} allowed",
                text.len()
            )));
        }
        Ok(Self(text))
    }

    /// Reads kept properties from an item's wire form, refusing anything that is not the
    /// canonical text of a JSON object without modelled properties.
    pub fn parse(text: String) -> Result<Self, ModelError> {
        Self::parse_for(Holder::Indicator, text)
    }

    /// [`Self::parse`] for either kind of holder.
    pub fn parse_for(holder: Holder, text: String) -> Result<Self, ModelError> {
        if text.is_empty() {
            return Ok(Self::none());
        }
        if text.len() > MAX_PROPERTIES_BYTES {
            return Err(problem(format!(
                "{} bytes of STIX properties, at most {MAX_PROPERTIES_BYTES} allowed",
                text.len()
            )));
        }
        let value: Value =
            serde_json::from_str(&text).map_err(|e| problem(format!("not a JSON object: {e}")))?;
        let Value::Object(map) = value else {
            return Err(problem("not a JSON object".into()));
        };
        if let Some(key) = map
            .iter()
            .find(|(k, v)| holder.models(k, v))
            .map(|(k, _)| k)
        {
            return Err(problem(format!(
                "{key:?} is carried by the item itself and cannot be a kept property"
            )));
        }
        if map.is_empty() {
            return Err(problem(
                "an empty object is written as no properties".into(),
            ));
        }
        let canonical = Self::from_map(map)?;
        if canonical.0 != text {
            return Err(problem(
                "not in canonical form (sorted keys, no spaces)".into(),
            ));
        }
        Ok(canonical)
    }

    /// Kept properties read back from bytes this node verified and stored earlier (they
    /// were checked by [`Self::parse`] then).
    pub(crate) fn trusted(text: String) -> Self {
        Self(text)
    }

    /// The canonical JSON text (empty when none).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The properties as a JSON map (empty when none).
    pub fn to_map(&self) -> Map<String, Value> {
        if self.0.is_empty() {
            return Map::new();
        }
        match serde_json::from_str(&self.0) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }

    /// Whether a property named `key` is kept, read without building the values.
    pub fn has(&self, key: &str) -> bool {
        if self.0.is_empty() {
            return false;
        }
        serde_json::from_str::<
            std::collections::HashMap<std::borrow::Cow<'_, str>, serde::de::IgnoredAny>,
        >(&self.0)
        .is_ok_and(|keys| keys.contains_key(key))
    }

    /// One kept property that is a string.
    pub fn string(&self, key: &str) -> Option<String> {
        self.to_map()
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

/// A `description` the model carries: any but an empty one, which is kept as a property
/// so that an input that gave an empty description gets it back.
fn described(key: &str, value: &Value) -> bool {
    key == "description" && value.as_str() != Some("")
}

/// A `confidence` of 0 and a `revoked` of `false` (what the model also holds when the
/// input gave neither), and kill chain phases the model cannot hold as given: they are
/// kept as properties, so an input that gave them gets them back. The item's own fields
/// still take precedence on export.
fn given_as_default(key: &str, value: &Value) -> bool {
    match key {
        "confidence" => value.as_u64() == Some(0),
        "revoked" => value == &Value::Bool(false),
        "kill_chain_phases" => phases_kept_as_given(value),
        _ => false,
    }
}

/// Whether an indicator's `kill_chain_phases` are valid but cannot be held in the
/// model's `chain:phase` form and read back the same: a `kill_chain_name` with a colon,
/// or a phase with properties besides its two names. Such phases are kept as given, and
/// the model holds none.
pub fn phases_kept_as_given(value: &Value) -> bool {
    let Value::Array(phases) = value else {
        return false;
    };
    let mut kept = false;
    for phase in phases {
        let Value::Object(phase) = phase else {
            return false;
        };
        let (Some(Value::String(chain)), Some(Value::String(_))) =
            (phase.get("kill_chain_name"), phase.get("phase_name"))
        else {
            return false;
        };
        kept |= chain.contains(':') || phase.len() != 2;
    }
    kept
}

fn problem(problem: String) -> ModelError {
    ModelError::Field {
        field: "stix_properties",
        problem,
    }
}

/// Nesting depth of a JSON value (a scalar is 0), computed without recursion.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, level)) = stack.pop() {
        deepest = deepest.max(level);
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, level + 1))),
            Value::Object(map) => stack.extend(map.values().map(|v| (v, level + 1))),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn has_looks_at_top_level_names_only() {
        let kept = StixProperties::keep(
            json!({"name": "x", "x_vendor": {"created": "nested"}})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert!(kept.has("name"));
        assert!(!kept.has("created"));
        assert!(!StixProperties::none().has("name"));
    }

    #[test]
    fn keeps_what_the_model_does_not_carry() {
        let object = json!({
            "type": "indicator", "id": "indicator--x", "name": "Bad host",
            "indicator_types": ["malicious-activity"], "labels": ["a"],
            "x_vendor": {"b": 1, "a": [1, 2]},
        });
        let kept = StixProperties::keep(object.as_object().unwrap()).unwrap();
        assert_eq!(
            kept.as_str(),
            r#"{"indicator_types":["malicious-activity"],"name":"Bad host","x_vendor":{"a":[1,2],"b":1}}"#
        );
        assert_eq!(
            StixProperties::parse(kept.as_str().to_owned()).unwrap(),
            kept
        );
        assert_eq!(kept.string("name").as_deref(), Some("Bad host"));
    }

    #[test]
    fn refuses_what_is_not_canonical_or_modelled() {
        for text in [
            r#"{"b":1,"a":2}"#,
            r#"{"a": 2}"#,
            r#"{"labels":["x"]}"#,
            r#"{"object_marking_refs":[]}"#,
            "{}",
            "[1]",
            "nope",
        ] {
            assert!(StixProperties::parse(text.to_owned()).is_err(), "{text}");
        }
        assert!(StixProperties::parse(String::new()).unwrap().is_empty());
    }

    #[test]
    fn keeps_defaults_given_and_phases_the_model_cannot_hold() {
        let object = json!({"confidence": 0, "revoked": false, "name": "n"});
        let kept = StixProperties::keep(object.as_object().unwrap()).unwrap();
        assert_eq!(
            kept.as_str(),
            r#"{"confidence":0,"name":"n","revoked":false}"#
        );
        assert_eq!(
            StixProperties::parse(kept.as_str().to_owned()).unwrap(),
            kept
        );
        let object = json!({"confidence": 10, "revoked": true, "name": "n"});
        let kept = StixProperties::keep(object.as_object().unwrap()).unwrap();
        assert_eq!(kept.as_str(), r#"{"name":"n"}"#);
        let phases = json!({"kill_chain_phases": [{"kill_chain_name": "a:b", "phase_name": "c"}]});
        let kept = StixProperties::keep(phases.as_object().unwrap()).unwrap();
        assert_eq!(
            kept.as_str(),
            r#"{"kill_chain_phases":[{"kill_chain_name":"a:b","phase_name":"c"}]}"#
        );
        for text in [
            r#"{"confidence":10}"#,
            r#"{"revoked":true}"#,
            r#"{"kill_chain_phases":[{"kill_chain_name":"a","phase_name":"b:c"}]}"#,
        ] {
            assert!(StixProperties::parse(text.to_owned()).is_err(), "{text}");
        }
    }

    #[test]
    fn bounds_size_and_depth() {
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!([deep]);
        }
        let object = json!({ "x_deep": deep });
        assert!(StixProperties::keep(object.as_object().unwrap()).is_err());
        let object = json!({ "x_big": "a".repeat(MAX_PROPERTIES_BYTES) });
        assert!(StixProperties::keep(object.as_object().unwrap()).is_err());
        let text = format!(r#"{{"x_big":"{}"}}"#, "a".repeat(MAX_PROPERTIES_BYTES));
        assert!(StixProperties::parse(text).is_err());
    }
}
