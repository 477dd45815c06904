//! STIX fidelity through a node: a bundle published with `entente publish` comes back
//! from `entente export` as it was given, apart from the normalisation the README names
//! ("STIX in and out"), and the export passes the OASIS `stix2-validator` in strict mode.
//! Everything is set up with the CLI itself (`init --with-certs`, `certs client`) and the
//! node runs under `entente serve`. Python with the packages in
//! `tests/python/requirements.txt` runs the validator.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

mod common;

const ENTENTE: &str = env!("CARGO_BIN_EXE_entente");

/// Upper bound for one command, and for the node to report its address.
const DEADLINE: Duration = Duration::from_secs(60);

const HQ: &str = "redmond.hq";
const ANALYST: &str = "analyst.alice";

const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
const TIME: &str = "2024-05-01T10:00:00.000Z";

/// Runs `entente ARGS`, failing the test if it does not finish within [`DEADLINE`].
fn entente(args: &[&str]) -> Output {
    let child = Command::new(ENTENTE)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn entente");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(output) => output.expect("wait for entente"),
        Err(_) => {
            // Our own child, by its id.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("entente {args:?} did not finish within {DEADLINE:?}");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `entente ARGS`, which must succeed; returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = entente(args);
    assert!(
        out.status.success(),
        "entente {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// A node made with `entente init --with-certs` with one analyst, running under
/// `entente serve`; stopped when dropped.
struct Hq {
    child: Child,
    dir: tempfile::TempDir,
    analyst: PathBuf,
}

impl Drop for Hq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hq {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let hq = dir.path().join("hq");
        ok(&[
            "init",
            "--dir",
            s(&hq),
            "--id",
            HQ,
            "--listen",
            "127.0.0.1:0",
            "--with-certs",
        ]);
        let config = hq.join("entente.toml");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&config)
            .expect("open node config");
        write!(
            file,
            "\n[[client]]\nid = \"{ANALYST}\"\nrole = \"analyst\"\n"
        )
        .unwrap();
        drop(file);

        let (child, addr) = common::serve(&config);
        let certs = hq.join("certs");
        ok(&[
            "certs",
            "client",
            "--dir",
            s(&certs),
            "--id",
            ANALYST,
            "--node",
            &addr,
            "--node-id",
            HQ,
        ]);
        Self {
            child,
            analyst: certs.join(format!("{ANALYST}.toml")),
            dir,
        }
    }

    /// Publishes `objects` as one STIX bundle (the text given as is); returns the
    /// command's output.
    fn publish_text(&self, name: &str, bundle: &str) -> Output {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bundle).unwrap();
        entente(&["publish", "--config", s(&self.analyst), s(&path)])
    }

    /// Publishes `objects`, which must all be accepted.
    fn publish(&self, name: &str, objects: &[Value]) {
        let out = self.publish_text(name, &bundle(objects));
        assert!(
            out.status.success(),
            "publish failed:\nstdout:\n{}\nstderr:\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    /// `entente export` into a file: the file, its text and its objects by id.
    fn export(&self, name: &str) -> (PathBuf, String, BTreeMap<String, Value>) {
        let path = self.dir.path().join(name);
        ok(&["export", "--config", s(&self.analyst), "--output", s(&path)]);
        let text = std::fs::read_to_string(&path).unwrap();
        let bundle: Value = serde_json::from_str(&text).expect("export is JSON");
        let objects = bundle["objects"]
            .as_array()
            .expect("a bundle")
            .iter()
            .map(|o| (o["id"].as_str().expect("an id").to_owned(), o.clone()))
            .collect();
        (path, text, objects)
    }
}

fn bundle(objects: &[Value]) -> String {
    json!({
        "type": "bundle",
        "id": "bundle--99999999-1111-4111-8111-111111111111",
        "objects": objects,
    })
    .to_string()
}

/// A complete, valid STIX 2.1 indicator marked TLP:GREEN, with `extra` properties
/// added or replaced (a `null` removes one).
fn indicator(n: u32, extra: Value) -> Value {
    let mut object = json!({
        "type": "indicator",
        "spec_version": "2.1",
        "id": format!("indicator--{n:08x}-1111-4111-8111-111111111111"),
        "created": TIME,
        "modified": TIME,
        "name": "n",
        "description": "d",
        "indicator_types": ["malicious-activity"],
        "pattern": format!("[ipv4-addr:value = '198.51.100.{n}']"),
        "pattern_type": "stix",
        "pattern_version": "2.1",
        "valid_from": TIME,
        "object_marking_refs": [GREEN],
    });
    let map = object.as_object_mut().unwrap();
    for (key, value) in extra.as_object().unwrap() {
        if value.is_null() {
            map.remove(key);
        } else {
            map.insert(key.clone(), value.clone());
        }
    }
    object
}

fn python() -> String {
    std::env::var("ENTENTE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The validator's strict verdict on `path`: `None` when valid, else its report.
fn strict_stix_errors(path: &Path) -> Option<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/validate_stix.py");
    let out = Command::new(python())
        .arg(script)
        .arg(path)
        .output()
        .expect("run python3 (install the packages in tests/python/requirements.txt)");
    (!out.status.success()).then(|| format!("{}{}", text(&out.stdout), text(&out.stderr)))
}

/// Nanoseconds since the epoch of a STIX timestamp, at its full precision.
fn instant_ns(value: &Value) -> i128 {
    let text = value.as_str().expect("a timestamp");
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339")
        .unix_timestamp_nanos()
}

/// The export's object `id`, which must be there.
fn exported<'a>(objects: &'a BTreeMap<String, Value>, id: &Value) -> &'a Value {
    let id = id["id"].as_str().unwrap();
    objects
        .get(id)
        .unwrap_or_else(|| panic!("{id} is not in the export"))
}

/// Compares an exported object with the one published, property by property, allowing
/// only the documented normalisation: times to the millisecond, the
/// pattern of a typed indicator written from its value, labels in lower case and each
/// once, the item's own marking in place of the input's, and what the input did not give
/// filled in.
fn assert_same_but_documented(published: &Value, got: &Value) {
    let id = published["id"].as_str().unwrap();
    let published = published.as_object().unwrap();
    for (key, value) in published {
        let out = &got[key.as_str()];
        match key.as_str() {
            "created" | "modified" | "valid_from" | "valid_until" => assert_eq!(
                instant_ns(out),
                instant_ns(value) / 1_000_000 * 1_000_000,
                "{id} {key}"
            ),
            "object_marking_refs" => assert_eq!(out, &json!([GREEN]), "{id}"),
            "labels" => {
                let mut lower: Vec<String> = Vec::new();
                for label in value.as_array().unwrap() {
                    let label = label.as_str().unwrap().to_ascii_lowercase();
                    if !lower.contains(&label) {
                        lower.push(label);
                    }
                }
                assert_eq!(out, &json!(lower), "{id} labels");
            }
            _ => assert_eq!(out, value, "{id} property {key}"),
        }
    }
    let filled = [
        "created",
        "created_by_ref",
        "name",
        "description",
        "pattern_version",
        "spec_version",
    ];
    for key in got.as_object().unwrap().keys() {
        assert!(
            published.contains_key(key) || filled.contains(&key.as_str()),
            "{id}: the export adds {key}: {}",
            got[key.as_str()]
        );
    }
}

/// An object first published with `created` and `modified` finer than a millisecond
/// (`…00.123456Z`, as many producers write them) is exported with a `modified` to the
/// millisecond; its `created` must not then be later than it: STIX asks `modified >=
/// created`, and the strict validator refuses such an export.
#[test]
fn created_finer_than_a_millisecond_is_never_after_modified() {
    let hq = Hq::start();
    let fine = "2024-05-01T10:00:00.123456Z";
    let indicator = indicator(
        1,
        json!({"created": fine, "modified": fine, "valid_from": fine}),
    );
    let malware = json!({
        "type": "malware", "spec_version": "2.1",
        "id": "malware--aaaaaaaa-1111-4111-8111-111111111111",
        "created": fine, "modified": fine, "name": "Evil", "is_family": true,
        "malware_types": ["trojan"], "object_marking_refs": [GREEN],
    });
    // A `created` earlier than the version by less than a millisecond is kept, written
    // to the millisecond as every exported time is.
    let earlier = json!({
        "type": "malware", "spec_version": "2.1",
        "id": "malware--bbbbbbbb-1111-4111-8111-111111111111",
        "created": "2024-05-01T10:00:00.122999Z", "modified": fine, "name": "Worse",
        "is_family": true, "malware_types": ["trojan"], "object_marking_refs": [GREEN],
    });
    hq.publish(
        "fine.json",
        &[indicator.clone(), malware.clone(), earlier.clone()],
    );
    let (path, _, objects) = hq.export("fine.json.out");
    for object in [&indicator, &malware, &earlier] {
        let got = exported(&objects, object);
        assert!(
            instant_ns(&got["created"]) <= instant_ns(&got["modified"]),
            "{got}"
        );
        assert_eq!(got["modified"], "2024-05-01T10:00:00.123Z");
    }
    assert_eq!(
        exported(&objects, &indicator)["created"],
        "2024-05-01T10:00:00.123Z"
    );
    assert_eq!(
        exported(&objects, &earlier)["created"],
        "2024-05-01T10:00:00.122Z"
    );
    if let Some(errors) = strict_stix_errors(&path) {
        panic!("stix2-validator --strict refused the export:\n{errors}");
    }
}

/// `confidence: 0` ("no confidence", on every STIX scale) and `revoked: false` are
/// properties the input gave; the export gives them back, as it does any other value.
#[test]
fn a_confidence_of_zero_and_revoked_false_come_back() {
    let hq = Hq::start();
    let zero = indicator(1, json!({"confidence": 0}));
    let full = indicator(2, json!({"confidence": 100}));
    let not_revoked = indicator(3, json!({"revoked": false}));
    let both = indicator(4, json!({"revoked": false, "confidence": 0}));
    let objects = [zero, full, not_revoked, both];
    hq.publish("defaults.json", &objects);
    let (path, _, exported_objects) = hq.export("defaults.json.out");
    for object in &objects {
        assert_same_but_documented(object, exported(&exported_objects, object));
    }
    if let Some(errors) = strict_stix_errors(&path) {
        panic!("stix2-validator --strict refused the export:\n{errors}");
    }

    // Revoking it later still exports `revoked: true` with the kept confidence of 0.
    let revoked = indicator(
        3,
        json!({"revoked": true, "confidence": 0, "modified": "2024-06-01T10:00:00.000Z"}),
    );
    hq.publish("revoke.json", std::slice::from_ref(&revoked));
    let (_, _, exported_objects) = hq.export("revoke.json.out");
    let got = exported(&exported_objects, &revoked);
    assert_eq!(got["revoked"], true, "{got}");
    assert_eq!(got["confidence"], 0, "{got}");
}

/// A custom property's number comes back with its value. A float whose shortest text
/// does not read back as the same `f64` with a fast, inexact parser made the node refuse
/// the whole bundle ("not in canonical form").
#[test]
fn floats_in_custom_properties_come_back_with_their_value() {
    let hq = Hq::start();
    // Written as text: each number must reach the node as it is spelled here.
    let object = indicator(1, json!({})).to_string();
    let object = format!(
        "{},\"x_acme_scores\":[1.0715660391465826e-75,-1.81996730402717e-179,-1.603964615428183e+143,0.1,2.5,1000.0,-0.0]}}",
        &object[..object.len() - 1]
    );
    let bundle = format!(
        "{{\"type\":\"bundle\",\"id\":\"bundle--99999999-1111-4111-8111-111111111111\",\"objects\":[{object}]}}"
    );
    let out = hq.publish_text("floats.json", &bundle);
    assert!(
        out.status.success(),
        "publish failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let (_, text, _) = hq.export("floats.json.out");
    assert!(
        text.contains(
            "\"x_acme_scores\":[1.0715660391465826e-75,-1.81996730402717e-179,-1.603964615428183e+143,0.1,2.5,1000.0,-0.0]"
        ),
        "{text}"
    );
}

/// Valid STIX patterns that are not a single bracketed comparison: observation
/// expressions with qualifiers (`WITHIN`, `REPEATS`, `START … STOP`) and parenthesised
/// groups. The README promises a raw pattern "is kept as written"; they were refused as
/// not starting with `[` and ending with `]`.
#[test]
fn patterns_with_qualifiers_and_groups_are_kept_as_written() {
    let hq = Hq::start();
    let patterns = [
        "[ipv4-addr:value = '198.51.100.200'] FOLLOWEDBY [domain-name:value = 'x.example'] WITHIN 300 SECONDS",
        "([file:name = 'a.exe' AND file:size > 100] OR [process:command_line LIKE '%foo%']) REPEATS 2 TIMES",
        "[file:name = 'b.exe'] START t'2024-01-01T00:00:00Z' STOP t'2024-02-01T00:00:00Z'",
        "([ipv4-addr:value = '198.51.100.201'] AND [ipv4-addr:value = '198.51.100.202'])",
    ];
    let objects: Vec<Value> = patterns
        .iter()
        .enumerate()
        .map(|(n, pattern)| indicator(n as u32 + 1, json!({ "pattern": pattern })))
        .collect();
    hq.publish("qualified.json", &objects);
    let (path, _, exported_objects) = hq.export("qualified.json.out");
    for object in &objects {
        assert_same_but_documented(object, exported(&exported_objects, object));
    }
    if let Some(errors) = strict_stix_errors(&path) {
        panic!("stix2-validator --strict refused the export:\n{errors}");
    }
    // Still found by the values it compares for equality.
    let found = ok(&[
        "query",
        "--config",
        s(&hq.analyst),
        "--value",
        "198.51.100.200",
        "--stix",
    ]);
    assert!(
        found.contains("indicator--00000001-1111-4111-8111-111111111111"),
        "{found}"
    );
}

/// What already comes back unchanged: escapes and characters outside the BMP, U+2028,
/// control characters, decomposed (non-NFC) text, nested custom values with nulls and
/// empty objects, external references with hashes, `lang`, `extensions` of a
/// property-extension definition, `created_by_ref`, timestamps of every precision, a
/// `name` left out (filled in), an empty description, labels in mixed case, compound
/// patterns, and context objects around them.
#[test]
fn every_other_property_comes_back_as_published() {
    let hq = Hq::start();
    let objects = vec![
        indicator(
            1,
            json!({
                "name": "caf\u{e9} \u{1F600} \u{2028} e\u{301} \"q\" \\ /",
                "description": "ctl \u{1}\u{1f}\u{7f} tab\t nl\n",
                "x_acme_text": "\u{0} nul",
            }),
        ),
        indicator(
            2,
            json!({"x_acme_nested": {"a": null, "c": "", "d": {}, "e": [null, [[1]], {"f": [1, "2", true, false]}]}}),
        ),
        indicator(
            3,
            json!({
                "external_references": [
                    {"source_name": "vt", "url": "https://x.example/a", "hashes": {"SHA-256": "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c"}},
                    {"source_name": "capec", "external_id": "CAPEC-163"},
                ],
                "lang": "fr",
                "created_by_ref": "identity--f431f809-377b-45e0-aa1c-6a4751cae5ff",
                "kill_chain_phases": [
                    {"kill_chain_name": "mitre-attack", "phase_name": "command-and-control"},
                    {"kill_chain_name": "lockheed-martin-cyber-kill-chain", "phase_name": "delivery"},
                ],
            }),
        ),
        indicator(
            4,
            json!({"extensions": {"extension-definition--d83fce45-ef58-4c6c-a3f4-1fbc32e98c6e": {"extension_type": "property-extension", "rank": 5, "toxicity": 8}}}),
        ),
        indicator(
            5,
            json!({
                "created": "2024-05-01T10:00:00Z",
                "modified": "2024-05-01T10:00:00.1Z",
                "valid_from": "2024-05-01T10:00:00.123456789Z",
                "valid_until": "2999-05-01T10:00:00.99Z",
            }),
        ),
        indicator(6, json!({"name": null, "description": ""})),
        indicator(7, json!({"labels": ["Alpha", "alpha", "BETA"]})),
        indicator(
            8,
            json!({"pattern": "[network-traffic:dst_ref.value = '203.0.113.9' AND network-traffic:dst_port = 443] OR [ipv4-addr:value = '198.51.100.8']"}),
        ),
        json!({
            "type": "malware", "spec_version": "2.1",
            "id": "malware--aaaaaaaa-1111-4111-8111-111111111111",
            "created": TIME, "modified": TIME, "name": "Evil", "is_family": true,
            "malware_types": ["trojan"], "object_marking_refs": [GREEN],
            "kill_chain_phases": [{"kill_chain_name": "acme:v2", "phase_name": "recon"}],
        }),
        json!({
            "type": "relationship", "spec_version": "2.1",
            "id": "relationship--aaaaaaaa-2222-4111-8111-111111111111",
            "created": TIME, "modified": TIME, "relationship_type": "indicates",
            "source_ref": "indicator--00000001-1111-4111-8111-111111111111",
            "target_ref": "malware--aaaaaaaa-1111-4111-8111-111111111111",
            "object_marking_refs": [GREEN],
        }),
        json!({
            "type": "report", "spec_version": "2.1",
            "id": "report--aaaaaaaa-3333-4111-8111-111111111111",
            "created": TIME, "modified": TIME, "name": "R", "published": TIME,
            "report_types": ["threat-report"],
            "object_refs": [
                "indicator--00000002-1111-4111-8111-111111111111",
                "malware--aaaaaaaa-1111-4111-8111-111111111111",
                "location--aaaaaaaa-4444-4111-8111-111111111111",
            ],
            "object_marking_refs": [GREEN],
        }),
    ];
    hq.publish("all.json", &objects);
    let (_, _, exported_objects) = hq.export("all.json.out");
    for object in &objects {
        assert_same_but_documented(object, exported(&exported_objects, object));
    }
}

/// An integer beyond 64 bits in a custom property (`123456789012345678901234567890`) is
/// read as an `f64` and comes back as `1.2345678901234568e+29`: another number, and a
/// float where an integer was given. Keeping it needs numbers read as their text
/// (`serde_json`'s `arbitrary_precision`), which the strict reader and the canonical
/// form of kept properties do not support yet.
#[test]
#[ignore = "integers beyond 64 bits are read as f64; keeping them needs numbers kept as text"]
fn integers_beyond_64_bits_come_back_with_their_value() {
    let hq = Hq::start();
    let object = indicator(1, json!({})).to_string();
    let object = format!(
        "{},\"x_acme_serial\":123456789012345678901234567890}}",
        &object[..object.len() - 1]
    );
    let bundle = format!(
        "{{\"type\":\"bundle\",\"id\":\"bundle--99999999-1111-4111-8111-111111111111\",\"objects\":[{object}]}}"
    );
    let out = hq.publish_text("big.json", &bundle);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, text, _) = hq.export("big.json.out");
    assert!(
        text.contains("\"x_acme_serial\":123456789012345678901234567890"),
        "{text}"
    );
}

/// An indicator's kill chain phases are held as `chain:phase` and were split at the
/// first colon on export, so a `kill_chain_name` with a colon (`acme:v2`, phase `recon`)
/// came back as chain `acme`, phase `v2:recon`, and a phase's other properties were
/// dropped. (A context object keeps its phases as given.)
#[test]
fn kill_chain_phases_come_back_as_given() {
    let hq = Hq::start();
    let colon = indicator(
        1,
        json!({"kill_chain_phases": [{"kill_chain_name": "acme:v2", "phase_name": "recon"}]}),
    );
    let colon_in_phase = indicator(
        2,
        json!({"kill_chain_phases": [{"kill_chain_name": "acme", "phase_name": "v2:recon"}]}),
    );
    let more = indicator(
        3,
        json!({"kill_chain_phases": [
            {"kill_chain_name": "mitre-attack", "phase_name": "execution"},
            {"kill_chain_name": "acme", "phase_name": "recon", "x_acme_order": 2},
        ]}),
    );
    let objects = [colon, colon_in_phase, more];
    hq.publish("phases.json", &objects);
    let (_, _, exported_objects) = hq.export("phases.json.out");
    for object in &objects {
        assert_same_but_documented(object, exported(&exported_objects, object));
    }
}

/// On every node it reaches: what berlin.office pulls from redmond.hq exports as the same
/// object there, the properties kept above (a confidence of 0, `revoked: false`, kill
/// chain phases kept as given, exact floats) included, each checked by the puller as
/// the canonical text its origin signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulling_node_exports_the_same_objects() {
    use entente::interop::{Defaults, InputFormat, parse_input, to_stix_from};
    use entente::model::{Item, Tlp};
    use entente::rpc::proto::{ItemFilter, PublishRequest};

    let pki = common::Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    pki.client("analyst.alice");
    let with_peer = |id: &entente::NodeId, peer: &str, address: &str| {
        let path =
            common::write_config(&pki, id, &[common::client("analyst.alice", "analyst")], &[]);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&format!(
            "\n[[peer]]\nid = \"{peer}\"\naddress = \"{address}\"\nrole = \"peer\"\nmax_tlp = \"GREEN\"\nallow_types = [\"*\"]\n"
        ));
        std::fs::write(&path, text).unwrap();
        path
    };
    let hq_node = common::start(&with_peer(&hq, "berlin.office", "127.0.0.1:1")).await;
    let berlin_node = common::start(&with_peer(
        &berlin,
        "redmond.hq",
        &hq_node.local_addr().to_string(),
    ))
    .await;

    // The float as text, read exactly (as the node reads it).
    let score: Value = serde_json::from_str("1.0715660391465826e-75").unwrap();
    let objects = vec![
        indicator(
            1,
            json!({"confidence": 0, "revoked": false, "x_acme_score": score}),
        ),
        indicator(
            2,
            json!({"kill_chain_phases": [{"kill_chain_name": "acme:v2", "phase_name": "recon", "x_acme_order": 2}]}),
        ),
        indicator(
            3,
            json!({"created": "2024-05-01T10:00:00.000123Z", "x_acme": {"n": [0.1, 2.5e-300, null, {}]}, "lang": "fr"}),
        ),
        indicator(
            4,
            json!({"pattern": "[file:name = 'a.exe'] REPEATS 2 TIMES"}),
        ),
    ];
    let bundle_text = bundle(&objects);
    assert!(bundle_text.contains("1.0715660391465826e-75"));
    let parsed = parse_input(
        InputFormat::Stix,
        &bundle_text,
        &Defaults {
            tlp: Some(Tlp::Green),
            indicator_type: None,
            tags: Vec::new(),
            origin: None,
        },
        0,
    );
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(parsed.items.len(), objects.len());

    let at_hq = common::connect(&pki, &hq_node, "analyst.alice").await;
    at_hq
        .publish(tokio_stream::iter(vec![PublishRequest {
            items: parsed.items.iter().map(entente::wire::Item::from).collect(),
            distribution: None,
            groups: vec![],
        }]))
        .await
        .unwrap();

    let stix = |items: Vec<entente::rpc::proto::StoredItem>| -> BTreeMap<String, Value> {
        items
            .into_iter()
            .map(|stored| {
                let item = Item::try_from(stored.item.unwrap()).unwrap();
                let object = to_stix_from(&item, Some("redmond.hq"));
                (object["id"].as_str().unwrap().to_owned(), object)
            })
            .collect()
    };
    let at_hq_objects = stix(
        at_hq
            .query(ItemFilter::default(), 1000, vec![])
            .await
            .unwrap()
            .items,
    );
    let at_berlin = common::connect(&pki, &berlin_node, "analyst.alice").await;
    let deadline = std::time::Instant::now() + DEADLINE;
    let at_berlin_objects = loop {
        let items = at_berlin
            .query(ItemFilter::default(), 1000, vec![])
            .await
            .unwrap()
            .items;
        if items.len() == objects.len() {
            break stix(items);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "berlin.office holds {} of {} items",
            items.len(),
            objects.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(at_berlin_objects, at_hq_objects);
    for object in &objects {
        let got = exported(&at_berlin_objects, object);
        if object["id"] == "indicator--00000003-1111-4111-8111-111111111111" {
            // A created finer than the version and after it becomes the version.
            assert_eq!(got["created"], TIME);
            let mut without = object.clone();
            without.as_object_mut().unwrap().remove("created");
            assert_same_but_documented(&without, got);
        } else {
            assert_same_but_documented(object, got);
        }
    }
    let first = exported(&at_berlin_objects, &objects[0]);
    assert_eq!(first["x_acme_score"].to_string(), "1.0715660391465826e-75");
}
