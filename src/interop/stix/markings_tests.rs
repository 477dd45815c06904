//! Tests of STIX data markings on input (granular markings, TLP marking definitions under
//! other ids, refusals), through the public parser only.

use serde_json::{Value, json};

use crate::interop::{Defaults, InputFormat, ParsedInput, parse_input};
use crate::model::{ItemKind, Tlp};

const NOW: i64 = 1_750_000_000_000;
const ID_1: &str = "indicator--11111111-1111-4111-8111-111111111111";
const ID_2: &str = "indicator--22222222-2222-4222-8222-222222222222";

const CLEAR: &str = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487";
const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
const AMBER: &str = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421";
const AMBER_STRICT: &str = "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003";
const RED: &str = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1";
const RED_V1: &str = "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed";
const UNKNOWN: &str = "marking-definition--00000000-0000-4000-8000-000000000000";
/// A random id, as OpenCTI gives its own marking definitions.
const RANDOM: &str = "marking-definition--8c3a5f0e-2b1d-4e6f-9a7c-3d2e1f0a9b8c";

fn parse(objects: Vec<Value>, tlp: Option<Tlp>) -> ParsedInput {
    let bundle = json!({
        "type": "bundle",
        "id": "bundle--44af6c39-c09b-49c5-9de2-394224b04982",
        "objects": objects,
    });
    let defaults = Defaults {
        tlp,
        ..Defaults::default()
    };
    parse_input(InputFormat::Stix, &bundle.to_string(), &defaults, NOW)
}

fn ioc(id: &str, markings: &[&str]) -> Value {
    json!({
        "type": "indicator",
        "spec_version": "2.1",
        "id": id,
        "created": "2025-01-01T00:00:00.000Z",
        "modified": "2025-01-02T00:00:00.000Z",
        "name": "c2 server",
        "description": "seen in case 2025-117",
        "pattern": "[ipv4-addr:value = '198.51.100.7']",
        "pattern_type": "stix",
        "valid_from": "2025-01-01T00:00:00Z",
        "labels": ["case-2025-117", "c2"],
        "kill_chain_phases": [
            {"kill_chain_name": "mitre-attack", "phase_name": "command-and-control"}
        ],
        "external_references": [{"source_name": "case", "url": "https://cases.example/117"}],
        "object_marking_refs": markings,
    })
}

/// `ioc` with granular markings `(marking_ref, selectors)`.
fn with_granular(mut object: Value, granular: &[(&str, &[&str])]) -> Value {
    object["granular_markings"] = granular
        .iter()
        .map(|(marking, selectors)| json!({"marking_ref": marking, "selectors": selectors}))
        .collect();
    object
}

fn tlps(parsed: &ParsedInput) -> Vec<Tlp> {
    parsed.items.iter().map(|item| item.tlp).collect()
}

/// The single error's reason, the input having given no item.
fn refused(parsed: &ParsedInput) -> &str {
    assert!(parsed.items.is_empty(), "{:?}", parsed.items);
    assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
    assert!(
        parsed.errors[0].position.ends_with(&format!("] ({ID_1})")),
        "{:?}",
        parsed.errors
    );
    &parsed.errors[0].reason
}

#[test]
fn clear_with_granular_amber_on_pattern_is_amber() {
    let object = with_granular(ioc(ID_1, &[CLEAR]), &[(AMBER, &["pattern"])]);
    let parsed = parse(vec![object], None);
    assert_eq!(parsed.errors, []);
    assert_eq!(tlps(&parsed), [Tlp::Amber]);
}

#[test]
fn green_with_granular_red_is_red() {
    let on_description = with_granular(ioc(ID_1, &[GREEN]), &[(RED, &["description"])]);
    // TLP 1.0 RED, on two fields, beside a lower one on another.
    let on_two = with_granular(
        ioc(ID_2, &[GREEN]),
        &[(CLEAR, &["pattern"]), (RED_V1, &["name", "valid_from"])],
    );
    let parsed = parse(vec![on_description, on_two], None);
    assert_eq!(parsed.errors, []);
    assert_eq!(tlps(&parsed), [Tlp::Red, Tlp::Red]);
}

#[test]
fn granular_markings_never_lower_the_object_marking() {
    let object = with_granular(ioc(ID_1, &[RED]), &[(CLEAR, &["pattern", "description"])]);
    let parsed = parse(vec![object], None);
    assert_eq!(parsed.errors, []);
    assert_eq!(tlps(&parsed), [Tlp::Red]);
}

#[test]
fn granular_on_nested_travelling_selectors_raises() {
    let cases: [(&str, &[&str], Tlp); 4] = [
        (
            AMBER_STRICT,
            &["kill_chain_phases.[0].phase_name"],
            Tlp::AmberStrict,
        ),
        (AMBER, &["labels.[1]"], Tlp::Amber),
        (RED, &["kill_chain_phases"], Tlp::Red),
        // One travelling selector among dropped ones is enough.
        (
            AMBER,
            &["external_references.[0].url", "confidence"],
            Tlp::Amber,
        ),
    ];
    for (marking, selectors, expected) in cases {
        let object = with_granular(ioc(ID_1, &[GREEN]), &[(marking, selectors)]);
        let parsed = parse(vec![object], None);
        assert_eq!(parsed.errors, [], "{selectors:?}");
        assert_eq!(tlps(&parsed), [expected], "{selectors:?}");
    }
}

#[test]
fn granular_on_dropped_properties_only_is_ignored() {
    let object = with_granular(
        ioc(ID_1, &[GREEN]),
        &[
            (RED, &["spec_version"]),
            // Not even resolved: nothing it marks is published.
            (UNKNOWN, &["spec_version"]),
        ],
    );
    let parsed = parse(vec![object], None);
    assert_eq!(parsed.errors, []);
    assert_eq!(tlps(&parsed), [Tlp::Green]);
}

#[test]
fn granular_on_properties_kept_as_given_raises() {
    // The model does not read these, but they are kept with the item and exported.
    for selector in [
        "external_references.[0].url",
        "created",
        "created_by_ref",
        "lang",
        "pattern_version",
    ] {
        let object = with_granular(ioc(ID_1, &[GREEN]), &[(RED, &[selector])]);
        let parsed = parse(vec![object], None);
        assert_eq!(parsed.errors, [], "{selector}");
        assert_eq!(tlps(&parsed), [Tlp::Red], "{selector}");
    }
}

#[test]
fn granular_raises_the_default_marking_too() {
    let object = with_granular(ioc(ID_1, &[]), &[(AMBER, &["pattern"])]);
    let parsed = parse(vec![object.clone()], Some(Tlp::Clear));
    assert_eq!(tlps(&parsed), [Tlp::Amber]);
    // Without an object marking or a default, the other fields have none: refused.
    let parsed = parse(vec![object], None);
    assert!(refused(&parsed).starts_with("no TLP marking"));
}

#[test]
fn granular_on_a_revocation_raises_it() {
    let mut object = with_granular(ioc(ID_1, &[GREEN]), &[(RED, &["pattern"])]);
    object["revoked"] = json!(true);
    let parsed = parse(vec![object], None);
    assert_eq!(parsed.errors, []);
    assert!(matches!(parsed.items[0].kind, ItemKind::Revocation(_)));
    assert_eq!(tlps(&parsed), [Tlp::Red]);
}

#[test]
fn granular_referencing_an_unknown_marking_is_refused() {
    let object = with_granular(ioc(ID_1, &[CLEAR]), &[(UNKNOWN, &["pattern"])]);
    let parsed = parse(vec![object], Some(Tlp::Red));
    assert_eq!(
        refused(&parsed),
        format!(
            "granular_markings[0] references {UNKNOWN}, which is neither a marking definition \
             in the bundle nor a known TLP marking definition"
        )
    );
}

#[test]
fn granular_with_lang_only_or_malformed_is_refused() {
    let mut lang = ioc(ID_1, &[GREEN]);
    lang["granular_markings"] = json!([{"lang": "de", "selectors": ["description"]}]);
    let parsed = parse(vec![lang], None);
    let reason = refused(&parsed);
    assert!(
        reason.starts_with("granular_markings[0] marks \"description\""),
        "{reason}"
    );
    assert!(reason.contains("\"de\""), "{reason}");

    for (granular, problem) in [
        (
            json!([{"marking_ref": RED}]),
            "granular_markings[0] has no selectors",
        ),
        (
            json!([{"marking_ref": RED, "selectors": []}]),
            "granular_markings[0] has no selectors",
        ),
        (
            json!([{"marking_ref": RED, "selectors": [""]}]),
            "granular_markings[0] has a selector that is not a non-empty string",
        ),
        (
            json!([{"marking_ref": RED, "lang": "en", "selectors": ["pattern"]}]),
            "granular_markings[0] has both marking_ref and lang",
        ),
        (
            json!([{"selectors": ["pattern"]}]),
            "granular_markings[0] has neither marking_ref nor lang",
        ),
        (
            json!({"marking_ref": RED}),
            "granular_markings is not a list",
        ),
        (json!([RED]), "granular_markings[0] is not an object"),
    ] {
        let mut object = ioc(ID_1, &[GREEN]);
        object["granular_markings"] = granular;
        assert_eq!(refused(&parse(vec![object], None)), problem);
    }
}

#[test]
fn opencti_amber_strict_under_a_random_id_is_read() {
    let definition = json!({
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": RANDOM,
        "created": "2024-01-01T00:00:00.000Z",
        "definition_type": "statement",
        "definition": {"statement": "custom"},
        "name": "TLP:AMBER+STRICT",
        "x_opencti_definition_type": "TLP",
        "x_opencti_definition": "TLP:AMBER+STRICT",
    });
    let parsed = parse(vec![definition.clone(), ioc(ID_1, &[RANDOM])], None);
    assert_eq!(parsed.errors, []);
    assert_eq!(tlps(&parsed), [Tlp::AmberStrict]);

    // As OpenCTI connectors write it: no name, only the x_opencti properties.
    let mut unnamed = definition.clone();
    unnamed.as_object_mut().map(|o| o.remove("name"));
    let parsed = parse(vec![unnamed, ioc(ID_1, &[RANDOM])], None);
    assert_eq!(tlps(&parsed), [Tlp::AmberStrict]);

    // And as a granular marking.
    let object = with_granular(ioc(ID_1, &[GREEN]), &[(RANDOM, &["pattern"])]);
    let parsed = parse(vec![definition, object], None);
    assert_eq!(tlps(&parsed), [Tlp::AmberStrict]);
}

#[test]
fn tlp_names_and_definitions_under_other_ids_are_read() {
    let cases = [
        (json!({"name": "tlp:red"}), Tlp::Red),
        (json!({"name": "TLP:WHITE"}), Tlp::Clear),
        (
            json!({"name": "TLP:CLEAR", "definition_type": "statement", "definition": {"statement": "TLP:CLEAR"}}),
            Tlp::Clear,
        ),
        (
            json!({"name": "TLP:GREEN", "definition_type": "tlp", "definition": {"tlp": "green"}}),
            Tlp::Green,
        ),
        (
            json!({"definition_type": "TLP", "definition": {"TLP": "TLP:AMBER"}, "x_opencti_definition": "TLP:AMBER"}),
            Tlp::Amber,
        ),
        (
            json!({"definition_type": "tlp", "definition": {"tlp": "amber"}}),
            Tlp::Amber,
        ),
    ];
    for (mut definition, expected) in cases {
        definition["type"] = json!("marking-definition");
        definition["id"] = json!(RANDOM);
        let parsed = parse(vec![definition.clone(), ioc(ID_1, &[RANDOM])], None);
        assert_eq!(parsed.errors, [], "{definition}");
        assert_eq!(tlps(&parsed), [expected], "{definition}");
    }
}

#[test]
fn conflicting_name_and_definition_is_refused() {
    let cases = [
        json!({"name": "TLP:AMBER", "definition_type": "tlp", "definition": {"tlp": "green"}}),
        json!({"name": "TLP:RED", "definition_type": "statement", "definition": {"statement": "custom"},
               "x_opencti_definition_type": "TLP", "x_opencti_definition": "TLP:CLEAR"}),
        json!({"name": "TLP:AMBER+STRICT", "definition_type": "statement", "definition": {"statement": "TLP:AMBER"}}),
        json!({"name": "TLP:PURPLE"}),
        json!({"name": "TLP:AMBER", "definition_type": "acs-marking", "definition": {}}),
    ];
    for mut definition in cases {
        definition["type"] = json!("marking-definition");
        definition["id"] = json!(RANDOM);
        let parsed = parse(
            vec![definition.clone(), ioc(ID_1, &[RANDOM])],
            Some(Tlp::Red),
        );
        let reason = refused(&parsed);
        assert!(
            reason.starts_with(&format!(
                "object_marking_refs references {RANDOM}, an ambiguous marking definition: "
            )),
            "{definition}: {reason}"
        );
    }
    let parsed = parse(
        vec![
            json!({"type": "marking-definition", "id": RANDOM, "name": "TLP:AMBER", "definition_type": "tlp", "definition": {"tlp": "green"}}),
            ioc(ID_1, &[GREEN]),
        ],
        None,
    );
    // An ambiguous definition that nothing references harms nothing.
    assert_eq!(parsed.errors, []);
    assert_eq!(tlps(&parsed), [Tlp::Green]);
}

#[test]
fn a_well_known_id_redefined_or_defined_twice_differently_is_refused() {
    let redefined = json!({"type": "marking-definition", "id": RED, "name": "TLP:CLEAR"});
    let parsed = parse(vec![redefined, ioc(ID_1, &[RED])], None);
    assert!(
        refused(&parsed).ends_with("its well-known id says TLP:RED but its name says TLP:CLEAR"),
        "{:?}",
        parsed.errors
    );
    let twice = [
        json!({"type": "marking-definition", "id": RANDOM, "name": "TLP:GREEN"}),
        json!({"type": "marking-definition", "id": RANDOM, "name": "TLP:RED"}),
    ];
    let parsed = parse(
        vec![twice[0].clone(), twice[1].clone(), ioc(ID_1, &[RANDOM])],
        None,
    );
    assert!(
        refused(&parsed).ends_with("the bundle defines it more than once, differently"),
        "{:?}",
        parsed.errors
    );
    // The same definition twice is fine.
    let parsed = parse(
        vec![twice[1].clone(), twice[1].clone(), ioc(ID_1, &[RANDOM])],
        None,
    );
    assert_eq!(tlps(&parsed), [Tlp::Red]);
}

#[test]
fn non_tlp_and_unknown_object_markings_are_refused() {
    let copyright = json!({"type": "marking-definition", "id": RANDOM, "definition_type": "statement",
                           "definition": {"statement": "Copyright 2025, Example Corp"}});
    let parsed = parse(
        vec![copyright.clone(), ioc(ID_1, &[GREEN, RANDOM])],
        Some(Tlp::Green),
    );
    assert_eq!(
        refused(&parsed),
        format!(
            "object_marking_refs references {RANDOM}, a marking that is not TLP \
             (\"Copyright 2025, Example Corp\"); only TLP markings can be carried, so the \
             object is refused rather than shared without it"
        )
    );
    let pap = json!({"type": "marking-definition", "id": RANDOM, "definition_type": "statement",
                     "definition": {"statement": "custom"}, "name": "PAP:AMBER",
                     "x_opencti_definition_type": "PAP", "x_opencti_definition": "PAP:AMBER"});
    let object = with_granular(ioc(ID_1, &[GREEN]), &[(RANDOM, &["pattern"])]);
    let parsed = parse(vec![pap, object], None);
    assert!(
        refused(&parsed).starts_with(&format!(
            "granular_markings[0] references {RANDOM}, a marking that is not TLP (\"PAP:AMBER\")"
        )),
        "{:?}",
        parsed.errors
    );
    // An unknown object marking is not dropped in favour of the default.
    let parsed = parse(vec![ioc(ID_1, &[GREEN, UNKNOWN])], Some(Tlp::Green));
    assert!(
        refused(&parsed).starts_with(&format!("object_marking_refs references {UNKNOWN}, which")),
        "{:?}",
        parsed.errors
    );
}

#[test]
fn hostile_markings_are_bounded_and_do_not_panic() {
    // Many granular markings with many selectors, and a very deep selector.
    let deep = format!("kill_chain_phases{}", ".[0]".repeat(100_000));
    let selectors: Vec<String> = (0..100).map(|i| format!("labels.[{i}]")).collect();
    let mut granular: Vec<Value> = (0..2_000)
        .map(|_| json!({"marking_ref": GREEN, "selectors": selectors}))
        .collect();
    granular.push(json!({"marking_ref": AMBER, "selectors": [deep]}));
    let mut object = ioc(ID_1, &[CLEAR]);
    object["granular_markings"] = Value::Array(granular);
    let started = std::time::Instant::now();
    let parsed = parse(vec![object], None);
    assert_eq!(parsed.errors, []);
    assert_eq!(tlps(&parsed), [Tlp::Amber]);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));

    // Deep nesting inside granular_markings is stopped by the JSON reader.
    let nested = format!(
        "{{\"type\": \"bundle\", \"objects\": [{{\"type\": \"indicator\", \"granular_markings\": {}{}}}]}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let parsed = parse_input(InputFormat::Stix, &nested, &Defaults::default(), NOW);
    assert!(parsed.items.is_empty());
    assert!(
        parsed.errors[0].reason.contains("recursion limit"),
        "{:?}",
        parsed.errors
    );

    // Odd shapes are refused, not trusted.
    for granular in [
        json!(null),
        json!([]),
        json!([{"marking_ref": 7, "selectors": ["pattern"]}]),
    ] {
        let mut object = ioc(ID_1, &[GREEN]);
        object["granular_markings"] = granular.clone();
        let parsed = parse(vec![object], None);
        if granular.as_array().is_some_and(|a| !a.is_empty()) {
            assert_eq!(
                refused(&parsed),
                "granular_markings[0] has a marking_ref that is not a string"
            );
        } else {
            assert_eq!(tlps(&parsed), [Tlp::Green]);
        }
    }
}
