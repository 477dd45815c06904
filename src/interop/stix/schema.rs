//! The STIX 2.1 shape of an object taken in, checked before it becomes an item: the
//! types of the common properties it keeps as published (`name`, `lang`,
//! `external_references`, …) and the properties its type requires (a malware's
//! `is_family`, a threat actor's `name`, a report's `published`). An object that breaks
//! them is refused with the reason, so that nothing the node signs and serves makes a
//! STIX consumer refuse the whole collection. Only what STIX 2.1 itself requires is
//! checked; custom properties and open vocabularies are left alone. Reads the object;
//! changes nothing.

use serde_json::Value;

use super::RawObject;

/// Properties that are strings wherever they appear.
const STRINGS: [&str; 5] = [
    "name",
    "description",
    "lang",
    "created_by_ref",
    "relationship_type",
];
/// Properties that are timestamps wherever they appear.
const TIMESTAMPS: [&str; 4] = ["created", "first_seen", "last_seen", "published"];
/// Properties that are non-empty lists of strings wherever they appear.
const STRING_LISTS: [&str; 9] = [
    "indicator_types",
    "malware_types",
    "tool_types",
    "threat_actor_types",
    "report_types",
    "aliases",
    "goals",
    "roles",
    "sectors",
];
/// Context types whose `name` STIX 2.1 requires.
const NAMED: [&str; 9] = [
    "threat-actor",
    "intrusion-set",
    "campaign",
    "attack-pattern",
    "tool",
    "identity",
    "vulnerability",
    "course-of-action",
    "report",
];

/// Checks `object`, of STIX type `ty`, or says what is wrong.
pub(super) fn check(object: &RawObject, ty: &str) -> Result<(), String> {
    for name in STRINGS {
        if let Some(value) = object.get(name) {
            if !value.is_string() {
                return Err(format!("{name} is not a string"));
            }
        }
    }
    for name in TIMESTAMPS {
        if let Some(value) = object.get(name) {
            let text = value
                .as_str()
                .ok_or_else(|| format!("{name} is not a timestamp (a string)"))?;
            super::super::parse_timestamp(text).map_err(|e| format!("{name}: {e}"))?;
        }
    }
    for name in STRING_LISTS {
        if let Some(value) = object.get(name) {
            let list = value
                .as_array()
                .filter(|list| list.iter().all(Value::is_string))
                .ok_or_else(|| format!("{name} is not a list of strings"))?;
            if list.is_empty() {
                return Err(format!("{name} is an empty list (leave it out instead)"));
            }
        }
    }
    for name in ["revoked", "is_family"] {
        if object.get(name).is_some_and(|value| !value.is_boolean()) {
            return Err(format!("{name} is not true or false"));
        }
    }
    if let Some(value) = object.get("external_references") {
        external_references(value)?;
    }
    let has = |name: &str| object.get(name).is_some();
    if NAMED.contains(&ty) && !has("name") {
        return Err(format!("a {ty} needs a name"));
    }
    if ty == "report" && !has("published") {
        return Err("a report needs published".into());
    }
    if ty == "malware" {
        // STIX 2.0 had no `is_family`; an object of 2.1 says so itself.
        let stix_2_1 = object.get("spec_version").and_then(Value::as_str) == Some("2.1");
        match object.get("is_family").and_then(Value::as_bool) {
            None if stix_2_1 => return Err("a malware needs is_family (true or false)".into()),
            Some(true) if !has("name") => {
                return Err("a malware family (is_family: true) needs a name".into());
            }
            _ => {}
        }
    }
    Ok(())
}

/// `external_references`: a non-empty list of objects, each with a `source_name` and,
/// where given, a string `description`, `url` and `external_id`.
fn external_references(value: &Value) -> Result<(), String> {
    let list = value
        .as_array()
        .ok_or("external_references is not a list")?;
    if list.is_empty() {
        return Err("external_references is an empty list (leave it out instead)".into());
    }
    for (at, reference) in list.iter().enumerate() {
        let Some(reference) = reference.as_object() else {
            return Err(format!("external_references[{at}] is not an object"));
        };
        if !reference.get("source_name").is_some_and(Value::is_string) {
            return Err(format!(
                "external_references[{at}] has no source_name (a string)"
            ));
        }
        for name in ["description", "url", "external_id"] {
            if reference.get(name).is_some_and(|value| !value.is_string()) {
                return Err(format!("external_references[{at}].{name} is not a string"));
            }
        }
    }
    Ok(())
}
