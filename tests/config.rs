//! A bad configuration is refused before any socket is bound, with a message that
//! names the field and the problem.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Pki, peer, write_config};
use entente::Config;

fn load_err(path: &Path) -> String {
    Config::load(path)
        .expect_err("config must be refused")
        .to_string()
}

/// Rewrites `path` with `from` replaced by `to` (which must occur).
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in config");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for part in parts {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
}

#[test]
fn a_valid_config_loads() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let path = write_config(
        &pki,
        &hq,
        &[peer("berlin.office", "berlin.example.org:7443")],
        &[],
    );
    let config = Config::load(&path).unwrap();
    assert_eq!(config.node.id, hq);
    assert_eq!(config.peers.len(), 1);
    assert_eq!(config.peers[0].role, entente::Role::Peer);
}

#[test]
fn field_errors_name_the_field() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.node("other.node");
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "id = \"redmond.hq\"",
            "id = \"Redmond HQ\"",
            &["node.id", "not allowed"],
        ),
        (
            "listen = \"127.0.0.1:0\"",
            "listen = \"localhost\"",
            &["node.listen", "address:port"],
        ),
        (
            "trust_anchors = [",
            "trust_anchors = [\"/nonexistent/ca.crt\", ",
            &["node.trust_anchors", "/nonexistent/ca.crt"],
        ),
        (
            "redmond.hq.crt",
            "other.node.crt",
            &["node.cert", "other.node", "not for redmond.hq"],
        ),
        ("redmond.hq.key", "other.node.key", &["node.key"]),
        (
            "[node]",
            "[node]\ncolour = \"blue\"",
            &["unknown field", "colour"],
        ),
        (
            "address = \"127.0.0.1:1\"",
            "address = \"berlin.example.org\"",
            &["peer[0].address", "host:port"],
        ),
        (
            "role = \"peer\"",
            "role = \"admin\"",
            &["peer[0].role", "peer or read_only"],
        ),
        (
            "role = \"peer\"",
            "role = \"superuser\"",
            &["unknown variant", "superuser"],
        ),
        (
            "[[peer]]\nid = \"berlin.office\"",
            "[[peer]]\nid = \"redmond.hq\"",
            &["peer[0].id", "is this node"],
        ),
    ];
    for (from, to, expect) in cases {
        let path = write_config(&pki, &hq, &[peer("berlin.office", "127.0.0.1:1")], &[]);
        edit(&path, from, to);
        let err = load_err(&path);
        assert_mentions(&err, expect);
        assert!(
            err.contains(&path.display().to_string()),
            "file not named: {err}"
        );
    }
}

#[test]
fn duplicate_partner_is_refused() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let path = write_config(
        &pki,
        &hq,
        &[
            peer("berlin.office", "127.0.0.1:1"),
            common::client("berlin.office", "read_only"),
        ],
        &[],
    );
    assert_mentions(&load_err(&path), &["client[0].id", "more than once"]);
}

#[test]
fn key_readable_by_others_is_refused() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let path = write_config(&pki, &hq, &[], &[]);
    let key = pki.certs.key_path("redmond.hq");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_mentions(&load_err(&path), &["node.key", "0644", "chmod 600"]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    Config::load(&path).unwrap();
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.node("other.node");
    let path = write_config(&pki, &hq, &[], &[]);
    // Keep hq's certificate, take another node's key.
    std::fs::copy(
        pki.certs.key_path("other.node"),
        pki.path().join("wrong.key"),
    )
    .unwrap();
    edit(
        &path,
        &pki.certs.key_path("redmond.hq").display().to_string(),
        &pki.path().join("wrong.key").display().to_string(),
    );
    assert_mentions(&load_err(&path), &["node.key"]);
}

#[test]
fn syntax_errors_give_the_position() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let path = write_config(&pki, &hq, &[], &[]);
    edit(&path, "listen = \"127.0.0.1:0\"", "listen = 127.0.0.1:0");
    assert_mentions(&load_err(&path), &["line 3"]);
}

#[test]
fn missing_file_is_named() {
    let err = load_err(Path::new("/nonexistent/entente.toml"));
    assert_mentions(&err, &["/nonexistent/entente.toml", "cannot read"]);
}

#[test]
fn a_leaf_certificate_as_trust_anchor_is_refused() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.node("berlin.office");
    pki.client("analyst.alice");
    for leaf in ["redmond.hq", "berlin.office", "analyst.alice"] {
        let path = write_config(&pki, &hq, &[], &[]);
        let leaf_path = pki.certs.cert_path(leaf).display().to_string();
        // Alone, and next to the real CA.
        for anchors in [
            format!("trust_anchors = [\"{leaf_path}\"]"),
            format!(
                "trust_anchors = [\"{}\", \"{leaf_path}\"]",
                pki.ca_cert().display()
            ),
        ] {
            let text = std::fs::read_to_string(&path).unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with("trust_anchors"))
                .unwrap();
            std::fs::write(&path, text.replacen(line, &anchors, 1)).unwrap();
            let err = load_err(&path);
            assert_mentions(
                &err,
                &[
                    "node.trust_anchors",
                    &leaf_path,
                    leaf,
                    "not a CA certificate",
                ],
            );
        }
    }
}

/// `[limits]` values: what is not given keeps its default, a value in range is taken,
/// and one outside its range is refused with the key and the range named.
#[test]
fn limits_take_defaults_and_refuse_values_outside_their_range() {
    use std::time::Duration;
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let with_limits = |limits: &str| {
        let path = write_config(&pki, &hq, &[], &[]);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n[limits]\n");
        text.push_str(limits);
        std::fs::write(&path, text).unwrap();
        path
    };

    let defaults = Config::load(&with_limits("")).unwrap().node.limits;
    assert_eq!(defaults, entente::limits::Limits::default());
    assert_eq!(defaults.idle_connection_timeout, Duration::from_secs(300));

    let set = Config::load(&with_limits(
        "idle_connection_timeout = \"10m\"\npull_page_bytes = 1048576\npull_queue_messages = 8\npublish_message_bytes = 65536\npull_transfer_bytes = 8388608\n",
    ))
    .unwrap()
    .node
    .limits;
    assert_eq!(set.idle_connection_timeout, Duration::from_secs(600));
    assert_eq!(set.pull_page_bytes, 1 << 20);
    assert_eq!(set.pull_queue_messages, 8);
    assert_eq!(set.pull_transfer_bytes, 8 << 20);
    let answers = Config::load(&with_limits(
        "query_page_bytes = 1048576\nunsent_answer_bytes = 2097152\n",
    ))
    .unwrap()
    .node
    .limits;
    assert_eq!(answers.query_page_bytes, 1 << 20);
    assert_eq!(answers.unsent_answer_bytes, 2 << 20);
    // By default a puller holds whatever the largest publishable bundle brings.
    assert_eq!(
        defaults.pull_transfer_bytes,
        entente::limits::publishable_item_bytes(entente::limits::MAX_PUBLISH_MESSAGE_BYTES)
    );

    let refused: &[(&str, &[&str])] = &[
        (
            "idle_connection_timeout = \"0s\"\n",
            &["limits.idle_connection_timeout", "outside 1s..=86400s"],
        ),
        (
            "idle_connection_timeout = \"2d\"\n",
            &["limits.idle_connection_timeout", "outside"],
        ),
        (
            "idle_connection_timeout = \"soon\"\n",
            &["limits.idle_connection_timeout"],
        ),
        (
            "pull_page_bytes = 1000\n",
            &["limits.pull_page_bytes", "outside 65536..=67108864"],
        ),
        (
            "pull_page_bytes = 1073741824\n",
            &["limits.pull_page_bytes", "outside"],
        ),
        (
            "pull_queue_messages = 0\n",
            &["limits.pull_queue_messages", "outside 1..=64"],
        ),
        (
            "pull_queue_messages = 1000\n",
            &["limits.pull_queue_messages", "outside"],
        ),
        // Less than a bundle this node lets its own clients publish would bring.
        (
            "pull_transfer_bytes = 8388608\n",
            &[
                "limits.pull_transfer_bytes",
                "8388608 is less than",
                "publish_message_bytes (16777216)",
                "could not cross",
            ],
        ),
        (
            "publish_message_bytes = 65536\npull_transfer_bytes = 1048576\n",
            &[
                "limits.pull_transfer_bytes",
                "publish_message_bytes (65536)",
            ],
        ),
        // More than any bundle can bring.
        (
            "pull_transfer_bytes = 1073741824\n",
            &["limits.pull_transfer_bytes", "outside"],
        ),
        (
            "query_page_bytes = 1000\n",
            &["limits.query_page_bytes", "outside 65536..=67108864"],
        ),
        // A budget smaller than one page would refuse every second call.
        (
            "query_page_bytes = 8388608\nunsent_answer_bytes = 4194304\n",
            &["limits.unsent_answer_bytes", "outside 8388608..=1073741824"],
        ),
        (
            "unsent_answer_bytes = 4294967296\n",
            &["limits.unsent_answer_bytes", "outside"],
        ),
    ];
    for (limits, expect) in refused {
        assert_mentions(&load_err(&with_limits(limits)), expect);
    }
}

#[test]
fn ledger_settings_take_defaults_and_refuse_values_outside_their_range() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let with_ledger = |ledger: &str| {
        let path = write_config(&pki, &hq, &[], &[]);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n[ledger]\n");
        text.push_str(ledger);
        std::fs::write(&path, text).unwrap();
        path
    };
    let defaults = Config::load(&with_ledger("")).unwrap().node.ledger;
    assert_eq!(defaults, entente::store::LedgerSettings::default());
    let set = Config::load(&with_ledger(
        "segment_bytes = 1048576\nretain_days = 30\nretain_bytes = 4194304\narchive_dir = \"archive\"\n",
    ))
    .unwrap()
    .node
    .ledger;
    assert_eq!(set.segment_bytes, 1 << 20);
    assert_eq!(set.retain_days, Some(30));
    assert_eq!(set.retain_bytes, Some(4 << 20));
    assert_eq!(set.archive_dir, Some(pki.path().join("archive")));
    let refused: &[(&str, &[&str])] = &[
        (
            "segment_bytes = 100\n",
            &["ledger.segment_bytes", "outside"],
        ),
        ("retain_days = 0\n", &["ledger.retain_days", "at least 1"]),
        (
            "segment_bytes = 1048576\nretain_bytes = 1048576\n",
            &["ledger.retain_bytes", "two segments"],
        ),
        ("archive_dir = \"\"\n", &["ledger.archive_dir"]),
        ("retain_weeks = 3\n", &["retain_weeks"]),
    ];
    for (ledger, parts) in refused {
        assert_mentions(&load_err(&with_ledger(ledger)), parts);
    }
}

#[test]
fn the_admin_listener_is_optional_and_loopback_only() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let path = write_config(&pki, &hq, &[], &[]);
    let base = std::fs::read_to_string(&path).unwrap();
    // Absent: no admin listener.
    assert_eq!(Config::load(&path).unwrap().admin, None);
    let with = |text: &str| std::fs::write(&path, format!("{base}\n{text}")).unwrap();
    for listen in ["127.0.0.1:9464", "[::1]:9464", "127.0.0.1:0"] {
        with(&format!("[admin]\nlisten = \"{listen}\"\n"));
        let admin = Config::load(&path).unwrap().admin.expect("[admin] loaded");
        assert_eq!(admin.listen, listen.parse().unwrap());
    }
    let cases: &[(&str, &[&str])] = &[
        (
            "[admin]\nlisten = \"0.0.0.0:9464\"\n",
            &["admin.listen", "not a loopback address"],
        ),
        (
            "[admin]\nlisten = \"192.0.2.7:9464\"\n",
            &["admin.listen", "not a loopback address"],
        ),
        (
            "[admin]\nlisten = \"localhost:9464\"\n",
            &["admin.listen", "not an address:port"],
        ),
        ("[admin]\n", &["listen"]),
        (
            "[admin]\nlisten = \"127.0.0.1:9464\"\nclient_ca = \"ca.crt\"\n",
            &["client_ca"],
        ),
    ];
    for (text, parts) in cases {
        with(text);
        assert_mentions(&load_err(&path), parts);
    }
    // Its own port: not node.listen's, not taxii.listen's.
    let own_port = base.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:7443\"");
    std::fs::write(
        &path,
        format!("{own_port}\n[admin]\nlisten = \"127.0.0.1:7443\"\n"),
    )
    .unwrap();
    assert_mentions(&load_err(&path), &["admin.listen", "node.listen"]);
    std::fs::write(
        &path,
        format!(
            "{base}\n[taxii]\nlisten = \"127.0.0.1:8443\"\n\n[admin]\nlisten = \"127.0.0.1:8443\"\n"
        ),
    )
    .unwrap();
    assert_mentions(&load_err(&path), &["admin.listen", "taxii.listen"]);
}

/// A CRL path (or any file the configuration names) that is not a regular file is
/// refused at once: a FIFO would block a reload for ever, and a device never end.
#[test]
fn a_crl_path_that_is_not_a_regular_file_is_refused_without_blocking() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let fifo = pki.path().join("crl.fifo");
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path this test owns.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    for crl in [fifo, std::path::PathBuf::from("/dev/zero")] {
        let path = write_config(&pki, &hq, &[], std::slice::from_ref(&crl));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(load_err(&path));
        });
        let err = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("loading with crls = [{crl:?}] did not return"));
        assert_mentions(&err, &["not a regular file"]);
    }
}

/// The node makes its data directory owner-only, whatever the umask it was started
/// under: sled's files and the ledger segments in it name partners and what they got.
#[tokio::test]
async fn the_data_directory_is_made_owner_only() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let path = write_config(&pki, &hq, &[], &[]);
    let data = pki.path().join("data-redmond.hq");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = common::start(&path).await;
    let mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o700,
        "data directory mode {:o}",
        mode & 0o777
    );
    node.shutdown(std::time::Duration::from_secs(10))
        .await
        .unwrap();
}

/// A sharing group names nodes: a client in it would be bound by nothing, so the
/// configuration is refused, naming the group and the client.
#[test]
fn a_client_in_a_sharing_group_is_refused() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let path = write_config(
        &pki,
        &hq,
        &[
            peer("berlin.office", "127.0.0.1:1"),
            common::client("researcher.uni-x", "read_only"),
        ],
        &[],
    );
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[groups]\nops = [\"berlin.office\", \"researcher.uni-x\"]\n");
    std::fs::write(&path, text).unwrap();
    let err = load_err(&path);
    assert_mentions(&err, &["groups.ops", "researcher.uni-x", "[[client]]"]);
}
