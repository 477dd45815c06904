//! The client subcommands of the `entente` binary against a node started by
//! `entente serve`, everything set up with the CLI itself: `init --with-certs`,
//! `certs client --node --node-id` for the client configurations, then `publish`
//! (plain list, CSV, STIX 2.1), `query --stix` and `get`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use entente::interop::{Defaults, InputFormat, parse_input};
use entente::model::{IndicatorType, Tlp};

const ENTENTE: &str = env!("CARGO_BIN_EXE_entente");

/// Upper bound for one command, and for the node to report its address.
const DEADLINE: Duration = Duration::from_secs(60);

const HQ: &str = "redmond.hq";
const ANALYST: &str = "analyst.alice";
const READER: &str = "researcher.bob";
/// A read-only client that may see IPv4 addresses and domains only.
const NET_READER: &str = "researcher.net";
/// A read-only client that may see IPv4 addresses only.
const IP_READER: &str = "researcher.ip";

const C2_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/stix/indicators-for-C2-with-COA.json"
);
const C2_IP_ID: &str = "indicator--53fe3b22-0201-47cf-85d0-97c02164528d";
const C2_HASH_ID: &str = "indicator--a932fcc6-e032-476c-826f-cb970a5a1ade";
const C2_HASH: &str = "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c";

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

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `entente ARGS`, which must succeed; returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = entente(args);
    assert!(
        out.status.success(),
        "entente {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs `entente ARGS`, which must fail; returns the output.
fn fails(args: &[&str]) -> Output {
    let out = entente(args);
    assert!(
        !out.status.success(),
        "entente {args:?} should have failed:\nstdout:\n{}\nstderr:\n{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// A node made with `entente init --with-certs`, with an analyst and a read-only
/// client configured, running under `entente serve`; stopped when dropped.
struct Hq {
    child: Child,
    dir: tempfile::TempDir,
    analyst: PathBuf,
    reader: PathBuf,
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
        // The node must know its clients before it starts; their certificates come
        // from the same CA and can be issued afterwards.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&config)
            .expect("open node config");
        write!(
            file,
            "\n[[client]]\nid = \"{ANALYST}\"\nrole = \"analyst\"\n\n[[client]]\nid = \"{READER}\"\nrole = \"read_only\"\nallow_types = [\"*\"]\n\n[[client]]\nid = \"{NET_READER}\"\nrole = \"read_only\"\nallow_types = [\"ipv4\", \"domain\"]\n\n[[client]]\nid = \"{IP_READER}\"\nrole = \"read_only\"\nallow_types = [\"ipv4\"]\n"
        )
        .unwrap();
        drop(file);

        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let mut child = Command::new(ENTENTE)
            .args(["serve", "--config", s(&config)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn entente serve");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once(" serving on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node did not report its address; log:\n{}",
                    std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
                );
            }
        };
        let certs = hq.join("certs");
        let mut hq_node = Self {
            child,
            analyst: certs.join(format!("{ANALYST}.toml")),
            reader: certs.join(format!("{READER}.toml")),
            dir,
        };
        for id in [ANALYST, READER, NET_READER, IP_READER] {
            let out = ok(&[
                "certs",
                "client",
                "--dir",
                s(&certs),
                "--id",
                id,
                "--node",
                &addr,
                "--node-id",
                HQ,
            ]);
            assert!(out.contains("wrote client configuration"), "{out}");
        }
        assert!(hq_node.analyst.exists() && hq_node.reader.exists());
        // Still serving.
        assert!(hq_node.child.try_wait().unwrap().is_none());
        hq_node
    }

    /// Writes `text` to a file in the test directory.
    fn input(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `entente query --stix [FILTER]` as `config`: one STIX object per line.
    fn query_stix(&self, config: &Path, filter: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["query", "--config", s(config), "--stix"];
        args.extend_from_slice(filter);
        ok(&args)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect()
    }
}

/// (type, value, marking) of STIX indicator objects, read back with the crate's own
/// STIX input parser.
fn indicators(objects: &[serde_json::Value]) -> BTreeSet<(IndicatorType, String, Tlp)> {
    let bundle = serde_json::json!({
        "type": "bundle",
        "id": "bundle--6b2d5a0e-8f0e-4c7a-9d43-5f1f4a7e2c10",
        "objects": objects,
    });
    let parsed = parse_input(
        InputFormat::Stix,
        &bundle.to_string(),
        &Defaults::default(),
        entente::engine::now_ms(),
    );
    assert_eq!(parsed.errors, [], "query output does not read back as STIX");
    assert_eq!(parsed.items.len(), objects.len());
    parsed
        .items
        .iter()
        .map(|item| {
            (
                item.indicator_type(),
                item.value().expect("an indicator").to_owned(),
                item.tlp,
            )
        })
        .collect()
}

fn values(objects: &[serde_json::Value]) -> BTreeSet<String> {
    indicators(objects).into_iter().map(|(_, v, _)| v).collect()
}

fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or("")
}

#[test]
fn list_csv_and_stix_are_published_and_queried_back() {
    let hq = Hq::start();
    let analyst = s(&hq.analyst);

    let list = hq.input(
        "hits.txt",
        "# honeypot hits\n198.51.100.77\n\nPhish.Example.ORG\nhttp://dl.bad.example/x.exe\n",
    );
    let out = ok(&[
        "publish",
        "--config",
        analyst,
        "--tlp",
        "green",
        "--tag",
        "cli-list",
        s(&list),
    ]);
    assert!(
        last_line(&out).starts_with("published 3 items in 1 bundle to redmond.hq"),
        "{out}"
    );

    let csv = hq.input(
        "feed.csv",
        "type,value,tlp,tags\n\
         ipv4,203.0.113.50,amber,csv-a\n\
         domain,C2.Example.NET,,csv-a;csv-b\n\
         sha1,DA39A3EE5E6B4B0D3255BFEF95601890AFD80709,red,\n",
    );
    let out = ok(&["publish", "--config", analyst, "--tlp", "green", s(&csv)]);
    assert!(last_line(&out).starts_with("published 3 items"), "{out}");

    let out = ok(&[
        "publish",
        "--config",
        analyst,
        "--tlp",
        "amber+strict",
        C2_FIXTURE,
    ]);
    // Its two indicators, the identity that wrote them, the malware they indicate, the
    // course of action against it and the three relationships.
    assert!(last_line(&out).starts_with("published 8 items"), "{out}");

    let objects: Vec<serde_json::Value> = hq
        .query_stix(&hq.analyst, &[])
        .into_iter()
        .filter(|o| o["type"] == "indicator")
        .collect();
    let expected: BTreeSet<(IndicatorType, String, Tlp)> = [
        (IndicatorType::Ipv4, "198.51.100.77", Tlp::Green),
        (IndicatorType::Domain, "phish.example.org", Tlp::Green),
        (
            IndicatorType::Url,
            "http://dl.bad.example/x.exe",
            Tlp::Green,
        ),
        (IndicatorType::Ipv4, "203.0.113.50", Tlp::Amber),
        (IndicatorType::Domain, "c2.example.net", Tlp::Green),
        (
            IndicatorType::Sha1,
            "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            Tlp::Red,
        ),
        (IndicatorType::Ipv4, "10.0.0.0", Tlp::AmberStrict),
        (IndicatorType::Sha256, C2_HASH, Tlp::AmberStrict),
    ]
    .into_iter()
    .map(|(t, v, m)| (t, v.to_owned(), m))
    .collect();
    assert_eq!(indicators(&objects), expected);
    assert_eq!(objects.len(), expected.len(), "each item once");
    let mut bundles = BTreeSet::new();
    for object in &objects {
        assert_eq!(object["type"], "indicator", "{object}");
        let provenance = &object["x_entente_provenance"];
        assert_eq!(provenance["signature_verified"], true, "{object}");
        assert_eq!(provenance["origin"], HQ, "{object}");
        assert_eq!(provenance["received_from"], HQ, "{object}");
        assert_eq!(provenance["hops"], 0, "{object}");
        bundles.insert(provenance["bundle_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(bundles.len(), 3, "one bundle per publish: {bundles:?}");
    // STIX ids are kept.
    let ids: BTreeSet<&str> = objects.iter().filter_map(|o| o["id"].as_str()).collect();
    assert!(
        ids.contains(C2_IP_ID) && ids.contains(C2_HASH_ID),
        "{ids:?}"
    );

    // Filters through the CLI.
    let tagged = hq.query_stix(&hq.analyst, &["--tag", "csv-a"]);
    assert_eq!(
        values(&tagged),
        BTreeSet::from(["203.0.113.50".to_owned(), "c2.example.net".to_owned()])
    );
    let by_value = hq.query_stix(&hq.analyst, &["--value", "PHISH.example.org"]);
    assert_eq!(
        values(&by_value),
        BTreeSet::from(["phish.example.org".to_owned()])
    );
    let by_type = hq.query_stix(&hq.analyst, &["--type", "sha256"]);
    assert_eq!(values(&by_type), BTreeSet::from([C2_HASH.to_owned()]));
    let recent = hq.query_stix(&hq.analyst, &["--since", "1h"]);
    assert_eq!(
        values(&recent),
        values(&objects)
            .into_iter()
            .filter(|v| v != "10.0.0.0" && v != C2_HASH)
            .collect::<BTreeSet<_>>(),
        "the STIX items keep their 2014 versions"
    );

    // The read-only client sees the GREEN items only.
    let seen = hq.query_stix(&hq.reader, &[]);
    assert_eq!(
        values(&seen),
        BTreeSet::from([
            "198.51.100.77".to_owned(),
            "phish.example.org".to_owned(),
            "http://dl.bad.example/x.exe".to_owned(),
            "c2.example.net".to_owned(),
        ])
    );
}

#[test]
fn invalid_csv_lines_refuse_the_file_unless_skipped() {
    let hq = Hq::start();
    let analyst = s(&hq.analyst);
    let csv = hq.input(
        "bad.csv",
        "type,value,tlp\n\
         ipv4,192.0.2.10,green\n\
         ipv4,192.0.2.300,green\n\
         md5,d41d8cd98f00b204e9800998ecf8427,amber\n\
         domain,ok.example.org,green\n",
    );

    let out = fails(&["publish", "--config", analyst, s(&csv)]);
    let err = stderr(&out);
    let line = |n: usize| {
        err.lines()
            .find(|l| l.contains(&format!("line {n}: ")))
            .unwrap_or_else(|| panic!("no error for line {n}:\n{err}"))
            .to_owned()
    };
    assert!(line(3).contains("octet 4 (300) is above 255"), "{err}");
    assert!(line(4).contains("md5 has 32 hex digits, got 31"), "{err}");
    assert!(
        !err.contains("line 2:") && !err.contains("line 5:"),
        "{err}"
    );
    assert!(err.contains("nothing published"), "{err}");
    assert!(err.contains("--skip-invalid"), "{err}");
    assert!(!stdout(&out).contains("published"), "{}", stdout(&out));
    // Nothing at all reached the node.
    assert_eq!(
        hq.query_stix(&hq.analyst, &[]),
        Vec::<serde_json::Value>::new()
    );
    assert_eq!(
        hq.query_stix(&hq.analyst, &["--value", "192.0.2.10"]),
        Vec::<serde_json::Value>::new()
    );

    let out = ok(&["publish", "--config", analyst, "--skip-invalid", s(&csv)]);
    assert!(out.contains("published 2 items"), "{out}");
    assert!(
        last_line(&out).contains("skipped 2 invalid entries"),
        "{out}"
    );
    assert_eq!(
        values(&hq.query_stix(&hq.analyst, &[])),
        BTreeSet::from(["192.0.2.10".to_owned(), "ok.example.org".to_owned()])
    );
}

#[test]
fn a_list_without_a_marking_is_refused() {
    let hq = Hq::start();
    let list = hq.input("unmarked.txt", "198.51.100.1\nunmarked.example\n");
    let out = fails(&["publish", "--config", s(&hq.analyst), s(&list)]);
    let err = stderr(&out);
    assert!(err.contains("no TLP marking"), "{err}");
    assert!(err.contains("--tlp"), "{err}");
    assert!(err.contains("line 1") && err.contains("line 2"), "{err}");
    assert_eq!(
        hq.query_stix(&hq.analyst, &[]),
        Vec::<serde_json::Value>::new()
    );

    // Explicitly a list, too.
    let out = fails(&[
        "publish",
        "--config",
        s(&hq.analyst),
        "--format",
        "list",
        s(&list),
    ]);
    assert!(stderr(&out).contains("no TLP marking"), "{}", stderr(&out));
}

#[test]
fn get_prints_the_provenance() {
    let hq = Hq::start();
    let analyst = s(&hq.analyst);
    ok(&["publish", "--config", analyst, "--tlp", "amber", C2_FIXTURE]);

    let out = ok(&["get", "--config", analyst, C2_IP_ID]);
    let lines: Vec<&str> = out.lines().collect();
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} line:\n{out}"))
            .to_owned()
    };
    assert_eq!(field("id"), C2_IP_ID);
    assert_eq!(field("type"), "ipv4");
    assert_eq!(field("value"), "10.0.0.0");
    assert_eq!(field("marking"), "TLP:AMBER");
    assert_eq!(field("origin"), HQ);
    assert_eq!(field("received from"), format!("{HQ} (0 hops)"));
    assert_eq!(field("signature"), "origin signature verified");
    let bundle = field("bundle");
    assert!(bundle.starts_with("bundle--"), "{out}");

    // The same bundle as the JSON form names.
    let json: serde_json::Value =
        serde_json::from_str(ok(&["get", "--config", analyst, "--stix", C2_IP_ID]).trim()).unwrap();
    assert_eq!(json["id"], C2_IP_ID);
    assert_eq!(json["x_entente_provenance"]["bundle_id"], bundle.as_str());
    assert_eq!(json["x_entente_provenance"]["signature_verified"], true);

    // Unknown and withheld ids fail alike.
    let unknown = "indicator--00000000-0000-4000-8000-000000000000";
    let out = fails(&["get", "--config", analyst, unknown]);
    assert!(stderr(&out).contains("no such item"), "{}", stderr(&out));
    let out = fails(&["get", "--config", s(&hq.reader), C2_IP_ID]);
    assert!(stderr(&out).contains("no such item"), "{}", stderr(&out));
}

#[test]
fn a_read_only_client_cannot_publish() {
    let hq = Hq::start();
    let list = hq.input("reader.txt", "198.51.100.99\nreader.example\n");
    let out = fails(&[
        "publish",
        "--config",
        s(&hq.reader),
        "--tlp",
        "clear",
        s(&list),
    ]);
    let err = stderr(&out);
    assert!(err.contains("PermissionDenied"), "{err}");
    assert!(err.contains(READER), "{err}");
    assert!(!stdout(&out).contains("published"), "{}", stdout(&out));
    assert_eq!(
        hq.query_stix(&hq.analyst, &[]),
        Vec::<serde_json::Value>::new()
    );
    // Reading is allowed.
    assert_eq!(
        hq.query_stix(&hq.reader, &[]),
        Vec::<serde_json::Value>::new()
    );
}

/// TLP 2.0 marking-definition ids (OASIS).
const TLP_CLEAR_ID: &str = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487";
const TLP_AMBER_ID: &str = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421";
const TLP_GREEN_ID: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";

fn stix_indicator(id: &str, ip: &str, markings: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "type": "indicator",
        "spec_version": "2.1",
        "id": id,
        "created": "2025-01-01T00:00:00.000Z",
        "modified": "2025-01-02T00:00:00.000Z",
        "pattern": format!("[ipv4-addr:value = '{ip}']"),
        "pattern_type": "stix",
        "valid_from": "2025-01-01T00:00:00Z",
        "description": "c2 seen in an open case",
        "object_marking_refs": markings,
    })
}

fn stix_bundle(objects: Vec<serde_json::Value>) -> String {
    serde_json::json!({
        "type": "bundle",
        "id": "bundle--5f0c1f4e-3a8b-4c1d-9e2f-7a6b5c4d3e2f",
        "objects": objects,
    })
    .to_string()
}

#[test]
fn stix_granular_and_opencti_markings_are_kept_from_a_read_only_client() {
    let hq = Hq::start();
    let analyst = s(&hq.analyst);
    let granular_id = "indicator--0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let plain_id = "indicator--1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";
    let opencti_id = "indicator--2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f";
    let opencti_marking = "marking-definition--8c3a5f0e-2b1d-4e6f-9a7c-3d2e1f0a9b8c";

    // CLEAR as a whole, but its pattern is AMBER.
    let mut granular = stix_indicator(granular_id, "198.51.100.23", json_list(TLP_CLEAR_ID));
    granular["granular_markings"] =
        serde_json::json!([{"marking_ref": TLP_AMBER_ID, "selectors": ["pattern"]}]);
    let file = hq.input(
        "granular.json",
        &stix_bundle(vec![
            granular,
            stix_indicator(plain_id, "198.51.100.24", json_list(TLP_CLEAR_ID)),
        ]),
    );
    let out = ok(&["publish", "--config", analyst, s(&file)]);
    assert!(last_line(&out).starts_with("published 2 items"), "{out}");

    // The GREEN-limited read-only client gets the CLEAR indicator only.
    let seen = hq.query_stix(&hq.reader, &[]);
    assert_eq!(values(&seen), BTreeSet::from(["198.51.100.24".to_owned()]));
    let by_value = hq.query_stix(&hq.reader, &["--value", "198.51.100.23"]);
    assert_eq!(by_value, Vec::<serde_json::Value>::new());
    let out = fails(&["get", "--config", s(&hq.reader), granular_id]);
    assert!(stderr(&out).contains("no such item"), "{}", stderr(&out));

    // The analyst sees it, marked AMBER.
    let expected: BTreeSet<(IndicatorType, String, Tlp)> = [
        (IndicatorType::Ipv4, "198.51.100.23".to_owned(), Tlp::Amber),
        (IndicatorType::Ipv4, "198.51.100.24".to_owned(), Tlp::Clear),
    ]
    .into();
    assert_eq!(indicators(&hq.query_stix(&hq.analyst, &[])), expected);
    let out = ok(&["get", "--config", analyst, granular_id]);
    assert!(
        out.contains("marking:") && out.contains("TLP:AMBER"),
        "{out}"
    );

    // An OpenCTI TLP:AMBER+STRICT marking definition under its own id.
    let opencti = hq.input(
        "opencti.json",
        &stix_bundle(vec![
            serde_json::json!({
                "type": "marking-definition",
                "spec_version": "2.1",
                "id": opencti_marking,
                "created": "2024-01-01T00:00:00.000Z",
                "definition_type": "statement",
                "definition": {"statement": "custom"},
                "name": "TLP:AMBER+STRICT",
                "x_opencti_definition_type": "TLP",
                "x_opencti_definition": "TLP:AMBER+STRICT",
            }),
            stix_indicator(opencti_id, "198.51.100.25", json_list(opencti_marking)),
        ]),
    );
    let out = ok(&["publish", "--config", analyst, s(&opencti)]);
    assert!(last_line(&out).starts_with("published 1 item"), "{out}");
    let got = hq.query_stix(&hq.analyst, &["--value", "198.51.100.25"]);
    assert_eq!(
        indicators(&got),
        BTreeSet::from([(
            IndicatorType::Ipv4,
            "198.51.100.25".to_owned(),
            Tlp::AmberStrict
        )])
    );
    let out = fails(&["get", "--config", s(&hq.reader), opencti_id]);
    assert!(stderr(&out).contains("no such item"), "{}", stderr(&out));

    // A granular marking that cannot be read refuses the file; nothing is published.
    let unknown = "marking-definition--00000000-0000-4000-8000-000000000000";
    let fresh_id = "indicator--3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a";
    let mut unreadable = stix_indicator(fresh_id, "198.51.100.26", json_list(TLP_CLEAR_ID));
    unreadable["granular_markings"] =
        serde_json::json!([{"marking_ref": unknown, "selectors": ["description"]}]);
    let file = hq.input("unreadable.json", &stix_bundle(vec![unreadable]));
    let out = fails(&["publish", "--config", analyst, "--tlp", "clear", s(&file)]);
    let err = stderr(&out);
    assert!(err.contains(&format!("objects[0] ({fresh_id})")), "{err}");
    assert!(
        err.contains(&format!("granular_markings[0] references {unknown}")),
        "{err}"
    );
    assert!(err.contains("nothing published"), "{err}");
    assert_eq!(
        hq.query_stix(&hq.analyst, &["--value", "198.51.100.26"]),
        Vec::<serde_json::Value>::new()
    );
}

fn json_list(id: &str) -> serde_json::Value {
    serde_json::json!([id])
}

/// A STIX `revoked: true` object marked TLP:WHITE for an AMBER indicator is refused:
/// a revocation carries the marking of the item it revokes, so the read-only client
/// never learns the id or the reason.
#[test]
fn a_stix_revocation_marked_lower_than_its_indicator_is_refused() {
    const TLP_WHITE_ID: &str = "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9";
    let hq = Hq::start();
    let analyst = s(&hq.analyst);
    let id = "indicator--4e5f6a7b-8c9d-4e0f-8a1b-2c3d4e5f6a7b";
    let amber = hq.input(
        "amber.json",
        &stix_bundle(vec![stix_indicator(
            id,
            "198.51.100.40",
            json_list(TLP_AMBER_ID),
        )]),
    );
    let out = ok(&["publish", "--config", analyst, s(&amber)]);
    assert!(last_line(&out).starts_with("published 1 item"), "{out}");

    let mut revoked = stix_indicator(id, "198.51.100.40", json_list(TLP_WHITE_ID));
    revoked["modified"] = serde_json::json!("2025-02-01T00:00:00.000Z");
    revoked["revoked"] = serde_json::json!(true);
    let file = hq.input("revoked.json", &stix_bundle(vec![revoked]));
    let out = fails(&["publish", "--config", analyst, s(&file)]);
    let err = stderr(&out);
    assert!(
        err.contains("must carry its marking, type and tags"),
        "{err}"
    );
    // The reader sees nothing of it; the analyst still holds the AMBER indicator.
    assert_eq!(
        hq.query_stix(&hq.reader, &[]),
        Vec::<serde_json::Value>::new()
    );
    let out = fails(&["get", "--config", s(&hq.reader), id]);
    assert!(stderr(&out).contains("no such item"), "{}", stderr(&out));
    let held = ok(&["get", "--config", analyst, id]);
    assert!(
        held.contains("TLP:AMBER") && held.contains("198.51.100.40"),
        "{held}"
    );
}

/// The real STIX 2.1 examples shipped with the OASIS validator (43 indicators).
const REAL_EXAMPLES: [&str; 6] = [
    "indicators-for-C2-with-COA.json",
    "malicious-email-indicator-with-attachment.json",
    "indicator-for-c2-ip-address.json",
    "indicator-to-campaign-relationship.json",
    "apt1.json",
    "poisonivy.json",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stix")
        .join(name)
}

fn python() -> String {
    std::env::var("ENTENTE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs the OASIS `stix2-validator` in strict mode on `path`, failing the test with its
/// report if the file is not valid STIX 2.1.
fn assert_valid_stix(path: &Path) {
    assert_valid_stix_but(path, "");
}

/// The validator's strict verdict on `path`, with the checks `disabled` left out.
fn strict_stix(path: &Path, disabled: &str) -> Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/validate_stix.py");
    Command::new(python())
        .arg(script)
        .args(["--disable", disabled])
        .arg(path)
        .output()
        .expect("run python3 (install the packages in tests/python/requirements.txt)")
}

/// [`assert_valid_stix`] with the checks `disabled` left out.
fn assert_valid_stix_but(path: &Path, disabled: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/validate_stix.py");
    let out = Command::new(python())
        .arg(script)
        .args(["--disable", disabled])
        .arg(path)
        .output()
        .expect("run python3 (install the packages in tests/python/requirements.txt)");
    assert!(
        out.status.success(),
        "stix2-validator --strict refused {}:\n{}{}",
        path.display(),
        stdout(&out),
        stderr(&out)
    );
}

/// `entente export` as `config` into a file; returns the file and its objects by id.
fn export(
    hq: &Hq,
    config: &Path,
    name: &str,
) -> (
    PathBuf,
    std::collections::BTreeMap<String, serde_json::Value>,
) {
    let path = hq.dir.path().join(name);
    ok(&["export", "--config", s(config), "--output", s(&path)]);
    let bundle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("export is JSON");
    let objects = bundle["objects"]
        .as_array()
        .expect("a bundle")
        .iter()
        .map(|o| (o["id"].as_str().expect("an id").to_owned(), o.clone()))
        .collect();
    (path, objects)
}

/// Milliseconds of a STIX timestamp.
fn instant(value: &serde_json::Value) -> i64 {
    let text = value.as_str().expect("a timestamp");
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

#[test]
fn real_stix_keeps_its_properties_and_exports_valid_stix() {
    let hq = Hq::start();
    let analyst = s(&hq.analyst);
    let mut originals = Vec::new();
    for name in REAL_EXAMPLES {
        let path = fixture(name);
        let args = ["publish", "--config", analyst, "--tlp", "green", s(&path)];
        // Two OASIS examples reuse an object's UUID for a relationship (poisonivy its
        // malware's; apt1 its threat actor's, in a relationship to an identity): the node
        // refuses that one object (an id keeps its type), and publish says so.
        let reused = match name {
            "poisonivy.json" => Some(("69101c2f-da92-47af-b402-7c60a39a982f", "malware", 155)),
            "apt1.json" => Some(("d84cf283-93be-4ca7-890d-76c63eff3636", "threat-actor", 76)),
            _ => None,
        };
        if let Some((uuid, held, total)) = reused {
            let out = fails(&args);
            let err = stderr(&out);
            assert!(
                err.contains(&format!(
                    "rejected relationship--{uuid}: the same UUID is held as {held}--{uuid}"
                )),
                "{err}"
            );
            assert!(
                err.contains(&format!("1 item of {total} refused by redmond.hq")),
                "{err}"
            );
            assert!(
                stdout(&out).starts_with(&format!("published {} items in 1 bundle", total - 1))
            );
        } else {
            ok(&args);
        }
        let bundle: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        originals.extend(
            bundle["objects"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| o["type"] == "indicator")
                .cloned(),
        );
    }
    assert_eq!(originals.len(), 43);

    let (path, exported) = export(&hq, &hq.analyst, "real.json");
    for original in &originals {
        let id = original["id"].as_str().unwrap();
        let object = exported
            .get(id)
            .unwrap_or_else(|| panic!("{id} is not in the export"));
        for (key, value) in original.as_object().unwrap() {
            let got = &object[key.as_str()];
            match key.as_str() {
                // Versions and validity are kept to the millisecond.
                "modified" | "valid_from" | "valid_until" => {
                    assert_eq!(instant(got), instant(value), "{id} {key}")
                }
                // Written from the normalised value; it must say the same thing.
                "pattern" => assert!(got.is_string(), "{id} has no pattern"),
                // Tags, in lower case.
                "labels" => {
                    let lower: Vec<String> = value
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|l| l.as_str().unwrap().to_ascii_lowercase())
                        .collect();
                    assert_eq!(got, &serde_json::json!(lower), "{id} labels");
                }
                // The marking is the item's TLP 2.0 marking.
                "object_marking_refs" | "granular_markings" => {}
                _ => assert_eq!(got, value, "{id} property {key}"),
            }
        }
        assert!(object["created_by_ref"].is_string(), "{id}");
    }
    // The export carries the marking definitions and the origin's identity it names.
    assert!(exported.contains_key("marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"));
    assert!(
        exported
            .values()
            .any(|o| o["type"] == "identity" && o["name"] == HQ)
    );
    // The APT1 report's tools carry external references with a URL and no hash, which
    // strict mode refuses (check 302) in the published file itself; the export keeps
    // them as published. Every other check holds.
    assert!(!strict_stix(&fixture("apt1.json"), "").status.success());
    assert!(strict_stix(&fixture("apt1.json"), "302").status.success());
    assert_valid_stix_but(&path, "302");
}

#[test]
fn a_list_published_again_updates_its_indicators_under_valid_ids() {
    let hq = Hq::start();
    let analyst = s(&hq.analyst);
    let list = hq.input(
        "list.txt",
        "198.51.100.7\nc2.example.net\nhttp://x.example/a\n",
    );
    let csv = hq.input(
        "feed.csv",
        "type,value\nsha256,E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855\n",
    );
    for _ in 0..2 {
        ok(&["publish", "--config", analyst, "--tlp", "green", s(&list)]);
        ok(&["publish", "--config", analyst, "--tlp", "green", s(&csv)]);
    }
    let objects = hq.query_stix(&hq.analyst, &[]);
    assert_eq!(objects.len(), 4, "{objects:#?}");
    for object in &objects {
        let id = object["id"].as_str().unwrap();
        let uuid = uuid::Uuid::parse_str(id.strip_prefix("indicator--").unwrap()).unwrap();
        assert_eq!(uuid.get_version_num(), 4, "{id}");
    }
    let (path, _) = export(&hq, &hq.analyst, "list.json");
    assert_valid_stix(&path);
}

#[test]
fn revoke_keeps_the_marking_and_tags_and_exports_valid_stix() {
    let hq = Hq::start();
    let analyst = s(&hq.analyst);
    let list = hq.input("c2.txt", "c2.campaign.example\n203.0.113.9\n");
    ok(&[
        "publish",
        "--config",
        analyst,
        "--tlp",
        "amber",
        "--tag",
        "campaign-x",
        s(&list),
    ]);
    let before = hq.query_stix(&hq.analyst, &["--value", "c2.campaign.example"]);
    let id = before[0]["id"].as_str().unwrap().to_owned();

    let out = ok(&[
        "revoke",
        "--config",
        analyst,
        "--reason",
        "sinkholed by the registrar",
        &id,
    ]);
    assert!(out.contains(&format!("revoked {id}")), "{out}");

    // Revoked under its tag: a subscriber filtering by tag finds it.
    let tagged = hq.query_stix(&hq.analyst, &["--tag", "campaign-x"]);
    let revoked = tagged
        .iter()
        .find(|o| o["id"] == id.as_str())
        .expect("the revocation is found by its tag");
    assert_eq!(revoked["revoked"], true);
    assert_eq!(revoked["labels"], serde_json::json!(["campaign-x"]));
    assert_eq!(
        revoked["object_marking_refs"],
        serde_json::json!(["marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"])
    );
    assert_eq!(
        revoked["pattern"],
        "[domain-name:value = 'c2.campaign.example']"
    );
    assert_eq!(
        revoked["x_entente_revocation_reason"],
        "sinkholed by the registrar"
    );
    let (path, _) = export(&hq, &hq.analyst, "revoked.json");
    assert_valid_stix(&path);

    // Revoking it again is refused, saying when and why it was revoked.
    let twice = fails(&["revoke", "--config", analyst, "--reason", "again", &id]);
    assert!(
        stderr(&twice).contains("revoked already") && stderr(&twice).contains("sinkholed"),
        "{}",
        stderr(&twice)
    );

    // Nothing to revoke, and no right to revoke.
    let unknown = fails(&[
        "revoke",
        "--config",
        analyst,
        "--reason",
        "x",
        "indicator--00000000-0000-4000-8000-000000000000",
    ]);
    assert!(
        stderr(&unknown).contains("nothing to revoke"),
        "{}",
        stderr(&unknown)
    );
    let reader = fails(&["revoke", "--config", s(&hq.reader), "--reason", "x", &id]);
    assert!(
        stderr(&reader).contains("PermissionDenied") || stderr(&reader).contains("permission"),
        "{}",
        stderr(&reader)
    );
}

#[test]
fn a_compound_pattern_is_found_by_each_value_and_judged_by_each_type() {
    let hq = Hq::start();
    let certs = hq.dir.path().join("hq/certs");
    let net_reader = certs.join(format!("{NET_READER}.toml"));
    let ip_reader = certs.join(format!("{IP_READER}.toml"));
    let id = "indicator--7a1c4c52-3d6e-4e8b-9f2a-1b2c3d4e5f60";
    let mut compound = stix_indicator(id, "203.0.113.1", json_list(TLP_GREEN_ID));
    compound["pattern"] = serde_json::json!(
        "[ipv4-addr:value = '113.10.246.30'] OR [domain-name:value = 'Update.Evil.Example']"
    );
    let file = hq.input("compound.json", &stix_bundle(vec![compound]));
    ok(&["publish", "--config", s(&hq.analyst), s(&file)]);

    // Found under each value it names.
    for value in ["113.10.246.30", "update.evil.example"] {
        let found = hq.query_stix(&net_reader, &["--value", value]);
        let ids: Vec<&str> = found.iter().filter_map(|o| o["id"].as_str()).collect();
        assert_eq!(ids, [id], "--value {value}");
    }
    assert_eq!(
        hq.query_stix(&net_reader, &["--value", "198.51.100.99"]),
        Vec::<serde_json::Value>::new()
    );
    // Judged by every type it names: a partner limited to IPv4 gets nothing of it, and
    // what it is told is what it would be told of an absent id.
    assert_eq!(hq.query_stix(&net_reader, &[]).len(), 1);
    assert_eq!(
        hq.query_stix(&ip_reader, &["--value", "113.10.246.30"]),
        Vec::<serde_json::Value>::new()
    );
    assert_eq!(
        hq.query_stix(&ip_reader, &[]),
        Vec::<serde_json::Value>::new()
    );
    let withheld = stderr(&fails(&["get", "--config", s(&ip_reader), id]));
    let absent = stderr(&fails(&[
        "get",
        "--config",
        s(&ip_reader),
        "indicator--7a1c4c52-3d6e-4e8b-9f2a-1b2c3d4e5f61",
    ]));
    assert_eq!(
        withheld.replace(id, "ID"),
        absent.replace("indicator--7a1c4c52-3d6e-4e8b-9f2a-1b2c3d4e5f61", "ID")
    );
}

#[test]
fn generated_indicators_of_every_type_export_valid_stix() {
    let hq = Hq::start();
    let analyst = s(&hq.analyst);
    // STIX objects with and without the optional properties, typed and compound patterns.
    let mut objects = Vec::new();
    for n in 0..300u32 {
        let pattern = match n % 6 {
            0 => format!("[ipv4-addr:value = '198.51.{}.{}']", n / 250, n % 250),
            1 => format!("[domain-name:value = 'host-{n}.example.net']"),
            2 => format!("[url:value = 'https://h{n}.example.org/p?q={n}']"),
            3 => format!("[file:hashes.'SHA-256' = '{n:064x}']"),
            4 => format!(
                "[ipv4-addr:value = '203.0.113.{}' OR domain-name:value = 'c{n}.example']",
                n % 250
            ),
            _ => format!("[file:name = 'dropper-{n}.exe' AND file:size > {n}]"),
        };
        let mut object = serde_json::json!({
            "type": "indicator",
            "spec_version": "2.1",
            "id": format!("indicator--{}", uuid::Uuid::new_v4()),
            "created": "2025-03-01T10:00:00.000Z",
            "modified": "2025-03-02T10:00:00.000Z",
            "pattern": pattern,
            "pattern_type": "stix",
            "valid_from": "2025-03-01T10:00:00Z",
            "object_marking_refs": [TLP_GREEN_ID],
        });
        if n % 2 == 0 {
            object["name"] = serde_json::json!(format!("generated {n}"));
            object["description"] = serde_json::json!("a generated indicator");
            object["indicator_types"] = serde_json::json!(["malicious-activity"]);
            object["confidence"] = serde_json::json!(n % 101);
            object["labels"] = serde_json::json!(["generated", format!("batch-{}", n % 3)]);
            object["kill_chain_phases"] = serde_json::json!([
                {"kill_chain_name": "mitre-attack", "phase_name": "command-and-control"}
            ]);
            object["external_references"] = serde_json::json!([
                {"source_name": "case", "external_id": format!("CASE-{n}")}
            ]);
        }
        objects.push(object);
    }
    let stix = hq.input("generated.json", &stix_bundle(objects));
    ok(&["publish", "--config", analyst, s(&stix)]);
    let csv: String = std::iter::once("type,value,tlp,tags\n".to_owned())
        .chain((0..200).map(|n| match n % 4 {
            0 => format!("ipv6,2001:db8::{n:x},green,csv\n"),
            1 => format!("email,user{n}@example.com,amber,csv\n"),
            2 => format!("md5,{n:032x},clear,\n"),
            _ => format!("cidr,10.{n}.0.0/16,amber+strict,csv;net\n"),
        }))
        .collect();
    let csv = hq.input("generated.csv", &csv);
    ok(&["publish", "--config", analyst, s(&csv)]);

    let (path, exported) = export(&hq, &hq.analyst, "generated-export.json");
    let indicators = exported
        .values()
        .filter(|o| o["type"] == "indicator")
        .count();
    assert_eq!(indicators, 500);
    assert_valid_stix(&path);
}

fn object(ty: &str, id: &str, marking: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut object = serde_json::json!({
        "type": ty,
        "spec_version": "2.1",
        "id": id,
        "created": "2025-04-01T00:00:00.000Z",
        "modified": "2025-04-01T00:00:00.000Z",
        "object_marking_refs": [marking],
    });
    for (key, value) in extra.as_object().unwrap() {
        object[key.as_str()] = value.clone();
    }
    object
}

#[test]
fn context_objects_travel_under_policy_and_relationships_need_both_ends() {
    let hq = Hq::start();
    let certs = hq.dir.path().join("hq/certs");
    let net_reader = certs.join(format!("{NET_READER}.toml"));
    const GREEN_IP: &str = "indicator--0a0a0a0a-0000-4000-8000-000000000001";
    const AMBER_IP: &str = "indicator--0a0a0a0a-0000-4000-8000-000000000002";
    const MALWARE: &str = "malware--0a0a0a0a-0000-4000-8000-000000000003";
    const TO_MALWARE: &str = "relationship--0a0a0a0a-0000-4000-8000-000000000004";
    const AMBER_TO_MALWARE: &str = "relationship--0a0a0a0a-0000-4000-8000-000000000005";
    const REPORT_GREEN: &str = "report--0a0a0a0a-0000-4000-8000-000000000006";
    const REPORT_AMBER: &str = "report--0a0a0a0a-0000-4000-8000-000000000007";
    let relationship = |id: &str, source: &str| {
        object(
            "relationship",
            id,
            TLP_GREEN_ID,
            serde_json::json!({
                "relationship_type": "indicates",
                "source_ref": source,
                "target_ref": MALWARE,
            }),
        )
    };
    let report = |id: &str, refs: &[&str]| {
        object(
            "report",
            id,
            TLP_GREEN_ID,
            serde_json::json!({
                "name": "Campaign write-up",
                "description": "What we saw.",
                "report_types": ["campaign"],
                "published": "2025-04-01T00:00:00Z",
                "object_refs": refs,
            }),
        )
    };
    let objects = vec![
        stix_indicator(GREEN_IP, "198.51.100.61", json_list(TLP_GREEN_ID)),
        stix_indicator(AMBER_IP, "198.51.100.62", json_list(TLP_AMBER_ID)),
        object(
            "malware",
            MALWARE,
            TLP_GREEN_ID,
            serde_json::json!({
                "name": "Poison Ivy",
                "description": "A remote access tool.",
                "is_family": true,
                "malware_types": ["remote-access-trojan"],
                "aliases": ["PIVY"],
            }),
        ),
        relationship(TO_MALWARE, GREEN_IP),
        relationship(AMBER_TO_MALWARE, AMBER_IP),
        // A report may also name objects no node shares (an identity).
        report(
            REPORT_GREEN,
            &[
                GREEN_IP,
                MALWARE,
                TO_MALWARE,
                "location--0a0a0a0a-0000-4000-8000-00000000000f",
            ],
        ),
        report(REPORT_AMBER, &[GREEN_IP, AMBER_IP]),
        // Relationships to objects no node shares are skipped.
        object(
            "relationship",
            "relationship--0a0a0a0a-0000-4000-8000-000000000008",
            TLP_GREEN_ID,
            serde_json::json!({
                "relationship_type": "originates-from",
                "source_ref": MALWARE,
                "target_ref": "location--0a0a0a0a-0000-4000-8000-00000000000f",
            }),
        ),
    ];
    let file = hq.input("context.json", &stix_bundle(objects.clone()));
    let out = ok(&["publish", "--config", s(&hq.analyst), s(&file)]);
    assert!(last_line(&out).starts_with("published 7 items"), "{out}");

    let ids = |config: &Path| -> BTreeSet<String> {
        hq.query_stix(config, &[])
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // The GREEN reader sees the GREEN indicator, the malware, the relationship between
    // them and the report on them; not the relationship from the AMBER indicator, nor
    // the report that names it.
    let expected: BTreeSet<String> = [GREEN_IP, MALWARE, TO_MALWARE, REPORT_GREEN]
        .map(str::to_owned)
        .into();
    assert_eq!(ids(&hq.reader), expected);
    // A partner limited to IPv4 addresses and domains gets neither malware nor the
    // objects that reference it.
    let expected: BTreeSet<String> = [GREEN_IP].map(str::to_owned).into();
    assert_eq!(ids(&net_reader), expected);
    // The analyst sees everything.
    assert_eq!(ids(&hq.analyst).len(), 7);

    // A withheld relationship is answered exactly as an absent one.
    let withheld = stderr(&fails(&[
        "get",
        "--config",
        s(&hq.reader),
        AMBER_TO_MALWARE,
    ]));
    let absent_id = "relationship--0a0a0a0a-0000-4000-8000-0000000000ff";
    let absent = stderr(&fails(&["get", "--config", s(&hq.reader), absent_id]));
    assert_eq!(
        withheld.replace(AMBER_TO_MALWARE, "ID"),
        absent.replace(absent_id, "ID")
    );

    // What the reader gets back is the object that was published, and valid STIX.
    let (path, exported) = export(&hq, &hq.reader, "context-export.json");
    let malware = &exported[MALWARE];
    assert_eq!(malware["name"], "Poison Ivy");
    assert_eq!(malware["is_family"], true);
    assert_eq!(malware["aliases"], serde_json::json!(["PIVY"]));
    assert_eq!(exported[TO_MALWARE]["source_ref"], GREEN_IP);
    assert_eq!(exported[TO_MALWARE]["target_ref"], MALWARE);
    assert_eq!(
        exported[REPORT_GREEN]["object_refs"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert!(!exported.contains_key(AMBER_TO_MALWARE));
    assert!(!exported.contains_key(REPORT_AMBER));
    assert_valid_stix(&path);

    // One UUID, one type: a malware object under the GREEN indicator's UUID does not
    // replace it.
    let impostor = format!("malware--{}", GREEN_IP.trim_start_matches("indicator--"));
    let mut later = object(
        "malware",
        &impostor,
        TLP_GREEN_ID,
        serde_json::json!({"name": "Not an indicator", "is_family": false}),
    );
    later["modified"] = serde_json::json!("2025-05-01T00:00:00.000Z");
    let file = hq.input("impostor.json", &stix_bundle(vec![later]));
    let out = entente(&["publish", "--config", s(&hq.analyst), s(&file)]);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.contains("1 rejected"), "{said}");
    let held = ok(&["get", "--config", s(&hq.analyst), GREEN_IP]);
    assert!(held.contains("198.51.100.61"), "{held}");
    let absent = fails(&["get", "--config", s(&hq.analyst), &impostor]);
    assert!(
        stderr(&absent).contains("no such item"),
        "{}",
        stderr(&absent)
    );
}

/// The JSON lines of `entente ARGS --json`, which must succeed.
fn json_lines(args: &[&str]) -> Vec<serde_json::Value> {
    let mut args = args.to_vec();
    args.push("--json");
    ok(&args)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

/// The operator's client configuration: the node's own certificate, at its address.
fn operator_config(hq: &Hq) -> PathBuf {
    let certs = hq.dir.path().join("hq/certs");
    let analyst = std::fs::read_to_string(&hq.analyst).unwrap();
    let node = analyst
        .lines()
        .find_map(|l| l.strip_prefix("node = "))
        .expect("node = in the client configuration")
        .trim_matches('"')
        .to_owned();
    let path = hq.dir.path().join("operator.toml");
    std::fs::write(
        &path,
        format!(
            "[client]\nid = \"{HQ}\"\ncert = \"{}\"\nkey = \"{}\"\ntrust_anchors = [\"{}\"]\nnode = \"{node}\"\nnode_id = \"{HQ}\"\n",
            certs.join(format!("{HQ}.crt")).display(),
            certs.join(format!("{HQ}.key")).display(),
            certs.join("ca.crt").display(),
        ),
    )
    .unwrap();
    path
}

#[test]
fn publish_names_each_refused_item_and_exits_non_zero() {
    let hq = Hq::start();
    let analyst = s(&hq.analyst);
    const IP: &str = "indicator--7c3e9a51-0000-4000-8000-0000000000a1";
    const SAME_UUID: &str = "malware--7c3e9a51-0000-4000-8000-0000000000a1";
    let file = hq.input(
        "clash.json",
        &stix_bundle(vec![
            stix_indicator(IP, "198.51.100.90", json_list(TLP_GREEN_ID)),
            object(
                "malware",
                SAME_UUID,
                TLP_GREEN_ID,
                serde_json::json!({"name": "Clash", "is_family": false}),
            ),
        ]),
    );
    let out = fails(&["publish", "--config", analyst, s(&file)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out)
            .starts_with("published 1 item in 1 bundle to redmond.hq (0 duplicate, 1 rejected)"),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "rejected {SAME_UUID}: the same UUID is held as {IP}; an id keeps its type"
        )),
        "{err}"
    );
    assert!(
        err.contains("error: 1 item of 2 refused by redmond.hq"),
        "{err}"
    );

    // Again, as JSON: the indicator is now a duplicate, the malware refused again.
    let out = fails(&["publish", "--json", "--config", analyst, s(&file)]);
    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(summary["node"], HQ, "{summary}");
    assert_eq!(summary["items"], 2, "{summary}");
    assert_eq!(summary["accepted"], 0, "{summary}");
    assert_eq!(summary["duplicates"], 1, "{summary}");
    assert_eq!(summary["rejected"][0]["id"], SAME_UUID, "{summary}");
    assert!(
        summary["rejected"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("an id keeps its type")),
        "{summary}"
    );
    assert_eq!(summary["rejected"].as_array().unwrap().len(), 1);
    assert_eq!(summary["rejected_count"], 1);
    assert_eq!(summary["bundle_ids"].as_array().unwrap().len(), 1);

    // Nothing refused: exit 0, and the JSON says so.
    let fine = hq.input("fine.txt", "198.51.100.91\n");
    let summary = &json_lines(&["publish", "--config", analyst, "--tlp", "green", s(&fine)])[0];
    assert_eq!(summary["accepted"], 1, "{summary}");
    assert_eq!(summary["rejected"], serde_json::json!([]), "{summary}");
}

#[test]
fn query_prints_an_aligned_table_and_filters_by_marking() {
    let hq = Hq::start();
    let analyst = s(&hq.analyst);
    let green = hq.input("green.txt", "198.51.100.1\nphish.example.org\n");
    ok(&[
        "publish",
        "--config",
        analyst,
        "--tlp",
        "green",
        "--tag",
        "campaign-x",
        s(&green),
    ]);
    let amber = hq.input(
        "amber.txt",
        "https://login.example.net/very/long/path/to/a/page\n",
    );
    ok(&[
        "publish",
        "--config",
        analyst,
        "--tlp",
        "AMBER+STRICT",
        s(&amber),
    ]);

    let out = entente(&["query", "--config", analyst]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim(), "3 items");
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let header = lines[0];
    for name in [
        "ID", "TYPE", "TLP", "ORIGIN", "HOPS", "MODIFIED", "TAGS", "VALUE",
    ] {
        assert!(header.contains(name), "{header}");
    }
    // Every column starts where its name does.
    for (name, cells) in [
        ("TYPE", &["ipv4", "domain", "url"][..]),
        ("TLP", &["GREEN", "AMBER+STRICT"]),
        ("ORIGIN", &[HQ]),
        ("TAGS", &["campaign-x", "-"]),
        (
            "VALUE",
            &[
                "198.51.100.1",
                "phish.example.org",
                "https://login.example.net/",
            ],
        ),
    ] {
        let at = header.find(name).unwrap();
        for line in &lines[1..] {
            assert!(
                cells.iter().any(|cell| line[at..].starts_with(cell)),
                "{name} column misaligned:\n{table}"
            );
        }
    }

    let out = entente(&["query", "--config", analyst, "--limit", "1"]);
    assert_eq!(stderr(&out).trim(), "1 item");
    assert_eq!(stdout(&out).lines().count(), 2);

    let green_only = json_lines(&["query", "--config", analyst, "--tlp", "green"]);
    assert_eq!(green_only.len(), 2);
    assert!(green_only.iter().all(|i| i["tlp"] == "GREEN"));
    let strict = json_lines(&[
        "query",
        "--config",
        analyst,
        "--tlp",
        "amber+strict",
        "--tlp",
        "red",
    ]);
    assert_eq!(strict.len(), 1);
    assert_eq!(strict[0]["type"], "url");
    assert_eq!(strict[0]["tags"], serde_json::json!([]));
    let out = entente(&["query", "--config", analyst, "--tlp", "red"]);
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out).trim(), "0 items");

    // Times in every accepted form.
    for since in [
        "1h",
        "today",
        "yesterday",
        "1h30m",
        "2000-01-01",
        "2000-01-01T00:00:00Z",
        "946684800000",
    ] {
        assert_eq!(
            json_lines(&["query", "--config", analyst, "--since", since]).len(),
            3,
            "--since {since}"
        );
    }
    assert!(json_lines(&["query", "--config", analyst, "--since", "2100-01-01"]).is_empty());
    assert!(json_lines(&["query", "--config", analyst, "--since", "now"]).is_empty());
}

#[test]
fn every_client_command_prints_json() {
    let hq = Hq::start();
    let analyst = s(&hq.analyst);
    let operator = operator_config(&hq);
    let operator = s(&operator);
    let file = hq.input("one.txt", "198.51.100.7\n");
    let published = &json_lines(&[
        "publish",
        "--config",
        analyst,
        "--tlp",
        "green",
        "--tag",
        "case-7",
        s(&file),
    ])[0];
    let bundle = published["bundle_ids"][0].as_str().unwrap().to_owned();

    // The item JSON object, from query and get alike.
    let items = json_lines(&["query", "--config", analyst]);
    assert_eq!(items.len(), 1);
    let item = &items[0];
    let id = item["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("indicator--"), "{item}");
    assert_eq!(item["kind"], "indicator");
    assert_eq!(item["type"], "ipv4");
    assert_eq!(item["value"], "198.51.100.7");
    assert_eq!(item["tlp"], "GREEN");
    assert_eq!(item["tags"], serde_json::json!(["case-7"]));
    let modified = item["modified"].as_str().unwrap();
    assert!(
        modified.len() == 24 && modified.ends_with('Z'),
        "{modified}"
    );
    assert_eq!(item["valid_until"], serde_json::Value::Null);
    assert_eq!(item["revocation_reason"], "");
    assert_eq!(item["refs"], serde_json::json!([]));
    assert_eq!(
        item["provenance"],
        serde_json::json!({
            "origin": HQ, "bundle_id": bundle, "received_from": HQ, "hops": 0,
            "signature_verified": true,
        })
    );
    assert_eq!(&json_lines(&["get", "--config", analyst, &id])[0], item);
    let text = ok(&["get", "--config", analyst, &id]);
    assert!(text.contains("marking:       TLP:GREEN"), "{text}");

    // Policy explain for a stored item, as the operator.
    let explained = &json_lines(&[
        "policy",
        "explain",
        "--config",
        operator,
        "--partner",
        READER,
        "--item",
        &id,
    ])[0];
    assert_eq!(explained["id"], id.as_str(), "{explained}");
    assert_eq!(explained["partner"], READER, "{explained}");
    assert_eq!(explained["allow"], true, "{explained}");
    assert!(explained["rule"].is_string(), "{explained}");
    // And for items of a file, judged by the node's configuration.
    let node_config = hq.dir.path().join("hq/entente.toml");
    let amber = hq.input("amber.txt", "192.0.2.44\n");
    let judged = json_lines(&[
        "policy",
        "explain",
        "--config",
        s(&node_config),
        "--partner",
        READER,
        "--input",
        s(&amber),
        "--tlp",
        "amber",
    ]);
    assert_eq!(judged.len(), 1);
    assert_eq!(judged[0]["value"], "192.0.2.44");
    assert_eq!(judged[0]["allow"], false, "{}", judged[0]);

    // Revoke.
    let revoked = &json_lines(&["revoke", "--config", analyst, "--reason", "sinkholed", &id])[0];
    assert_eq!(revoked["id"], id.as_str(), "{revoked}");
    assert_eq!(revoked["reason"], "sinkholed", "{revoked}");
    let item = &json_lines(&["get", "--config", analyst, &id])[0];
    assert_eq!(item["kind"], "revocation", "{item}");
    assert_eq!(item["value"], serde_json::Value::Null, "{item}");
    assert_eq!(item["revocation_reason"], "sinkholed", "{item}");

    // The ledger, shown and verified; policy reload.
    let records = json_lines(&["ledger", "show", "--config", operator, "--since", "1h"]);
    assert!(!records.is_empty());
    for record in &records {
        assert!(record["seq"].is_u64(), "{record}");
        assert!(
            record["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{record}"
        );
        assert_eq!(record["hash"].as_str().map(str::len), Some(64), "{record}");
    }
    let verified = &json_lines(&["ledger", "verify", "--config", operator])[0];
    assert_eq!(verified["intact"], true, "{verified}");
    assert_eq!(verified["broken_at"], serde_json::Value::Null, "{verified}");
    assert!(verified["records"].as_u64().unwrap() >= records.len() as u64);
    let text = ok(&["ledger", "verify", "--config", operator]);
    assert!(text.starts_with("ledger intact: "), "{text}");
    let reloaded = &json_lines(&["policy", "reload", "--config", operator])[0];
    assert_eq!(reloaded["node"], HQ);
    assert!(reloaded["policy_hash"].is_string(), "{reloaded}");
}

/// A value given on two identical lines (a list or CSV exported by another tool) is
/// published once, the repeat a duplicate; and the node's own indicators, exported and
/// published again as STIX, are duplicates too, though the export adds properties
/// (name, description, created) the list did not give.
#[test]
fn repeated_lines_and_the_nodes_own_export_published_again_are_duplicates() {
    let hq = Hq::start();
    let analyst = s(&hq.analyst);
    let list = hq.input("twice.txt", "dup.example\ndup.example\n198.51.100.9\n");
    let csv = hq.input(
        "twice.csv",
        "type,value\ndomain,row.example\ndomain,row.example\n",
    );
    ok(&["publish", "--config", analyst, "--tlp", "green", s(&list)]);
    ok(&["publish", "--config", analyst, "--tlp", "green", s(&csv)]);
    assert_eq!(hq.query_stix(&hq.analyst, &[]).len(), 3);

    // The indicators as the export writes them (its identity object is the node's own,
    // never published).
    let (exported, _) = export(&hq, &hq.analyst, "own.json");
    let mut bundle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&exported).unwrap()).unwrap();
    let kept: Vec<serde_json::Value> = bundle["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["type"] == "indicator" || o["type"] == "marking-definition")
        .cloned()
        .collect();
    bundle["objects"] = serde_json::Value::Array(kept);
    let path = hq.input("own-indicators.json", &bundle.to_string());
    let again = ok(&["publish", "--config", analyst, "--format", "stix", s(&path)]);
    assert!(last_line(&again).contains("0 rejected"), "{again}");
    assert_eq!(hq.query_stix(&hq.analyst, &[]).len(), 3);
}

/// Two things a publish did without a word (found by an acceptance walk): a list
/// published again after `entente revoke` made the revoked indicator live again, and a
/// report naming an object the node does not hold (in the OASIS examples, a
/// relationship refused because its UUID is an indicator's) was stored and then
/// withheld from every partner for good. Both are now said, and the JSON carries them.
#[test]
fn publish_says_what_it_made_live_again_and_what_waits() {
    let hq = Hq::start();
    let analyst = s(&hq.analyst);
    let list = hq.input("c2.txt", "relist.campaign.example\n");
    let publish_list = || entente(&["publish", "--config", analyst, "--tlp", "green", s(&list)]);
    assert!(publish_list().status.success());
    let id = hq.query_stix(&hq.analyst, &["--value", "relist.campaign.example"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&[
        "revoke",
        "--config",
        analyst,
        "--reason",
        "false positive",
        &id,
    ]);
    let again = publish_list();
    assert!(again.status.success(), "{}", stderr(&again));
    let told = stderr(&again);
    assert!(
        told.contains("1 indicator revoked before is live again") && told.contains(&id),
        "{told}"
    );

    const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
    let missing = "indicator--0badc0de-0000-4000-8000-000000000001";
    let report_id = "report--0badc0de-0000-4000-8000-000000000002";
    let report = object(
        "report",
        report_id,
        GREEN,
        serde_json::json!({"name": "R", "published": "2025-04-01T00:00:00Z", "object_refs": [missing]}),
    );
    let file = hq.input("report.json", &stix_bundle(vec![report]));
    let published = &json_lines(&["publish", "--config", analyst, s(&file)])[0];
    let waiting = published["waiting"].as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{published}");
    assert_eq!(waiting[0]["id"], report_id);
    assert!(
        waiting[0]["reason"].as_str().unwrap().contains(missing),
        "{published}"
    );
}
