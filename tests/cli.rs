//! The `entente` binary as an operator uses it: init with certificates, serve,
//! status over mTLS, the certs subcommands, and a clean stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ENTENTE: &str = env!("CARGO_BIN_EXE_entente");

fn entente(args: &[&str]) -> Output {
    Command::new(ENTENTE)
        .args(args)
        .output()
        .expect("run entente")
}

fn ok(args: &[&str]) -> String {
    let out = entente(args);
    assert!(
        out.status.success(),
        "entente {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Starts `entente serve` with its stderr (its log) going to `log`; returns it with the
/// address it printed.
fn serve_logging_to(config: &Path, log: impl Into<Stdio>) -> (Child, String) {
    let mut child = Command::new(ENTENTE)
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn entente serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, addr)) = line.split_once(" serving on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("node did not report its address");
    (child, addr)
}

fn wait_exit(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < deadline,
            "process did not exit within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn init_serve_status_and_stop_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let hq = dir.path().join("hq");
    let hq_s = hq.to_str().unwrap();
    ok(&[
        "init",
        "--dir",
        hq_s,
        "--id",
        "redmond.hq",
        "--listen",
        "127.0.0.1:0",
        "--with-certs",
    ]);
    let config = hq.join("entente.toml");
    assert!(config.exists());
    assert_eq!(mode(&hq.join("certs/ca.key")), 0o600);
    assert_eq!(mode(&hq.join("certs/redmond.hq.key")), 0o600);
    // init refuses to overwrite.
    assert!(
        !entente(&["init", "--dir", hq_s, "--id", "redmond.hq"])
            .status
            .success()
    );

    // The log goes to a file, not a terminal: it must carry no colour codes.
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (mut child, addr) = serve_logging_to(&config, log);
    let target = format!("redmond.hq@{addr}");
    let out = ok(&[
        "status",
        "--config",
        config.to_str().unwrap(),
        "--node",
        &target,
    ]);
    assert!(out.contains("node:             redmond.hq"), "{out}");
    assert!(
        out.contains("you are:          redmond.hq (admin)"),
        "{out}"
    );
    // The same as one JSON object; the operator also gets the links, feeds and limits.
    let out = ok(&[
        "status",
        "--json",
        "--config",
        config.to_str().unwrap(),
        "--node",
        &target,
    ]);
    let status: serde_json::Value = serde_json::from_str(out.trim()).expect("status --json");
    assert_eq!(status["node"], "redmond.hq", "{status}");
    assert_eq!(status["address"], addr.as_str(), "{status}");
    assert_eq!(status["caller"]["id"], "redmond.hq", "{status}");
    assert_eq!(status["caller"]["role"], "admin", "{status}");
    assert!(status["protocol_version"].is_u64(), "{status}");
    assert!(status["capabilities"].is_array(), "{status}");
    assert_eq!(status["links"], serde_json::json!([]), "{status}");
    assert!(
        status["limits"]
            .as_array()
            .is_some_and(|l| !l.is_empty() && l.iter().all(|l| l["name"].is_string())),
        "{status}"
    );

    // An admin client's own configuration works too, with the operator's view.
    let certs = hq.join("certs");
    for id in ["ops.admin", "narrow.admin"] {
        ok(&[
            "certs",
            "client",
            "--dir",
            certs.to_str().unwrap(),
            "--id",
            id,
            "--node",
            &addr,
            "--node-id",
            "redmond.hq",
        ]);
    }
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[[client]]\nid = \"ops.admin\"\nrole = \"admin\"\n");
    text.push_str("\n[[client]]\nid = \"narrow.admin\"\nrole = \"admin\"\nmax_tlp = \"GREEN\"\n");
    std::fs::write(&config, text).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let admin = certs.join("ops.admin.toml");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let out = entente(&["status", "--json", "--config", admin.to_str().unwrap()]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status as an admin client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let status: serde_json::Value =
        serde_json::from_str(answer.trim()).expect("status --json as an admin client");
    assert_eq!(status["caller"]["id"], "ops.admin", "{status}");
    assert_eq!(status["caller"]["role"], "admin", "{status}");
    assert!(status["limits"].is_array(), "{status}");

    // An admin whose policy is narrowed is shown what any caller is, not the node's
    // links, feeds, limits or store.
    let narrow = certs.join("narrow.admin.toml");
    let out = entente(&["status", "--json", "--config", narrow.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "status as a narrowed admin: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["caller"]["id"], "narrow.admin", "{status}");
    assert!(status["certificates"].is_array(), "{status}");
    for operator_only in ["links", "feeds", "limits", "store"] {
        assert!(status.get(operator_only).is_none(), "{status}");
    }

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "serve exited with {status}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log:?}"
    );
}

#[test]
fn serve_refuses_a_bad_config_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let hq = dir.path().join("hq");
    ok(&[
        "init",
        "--dir",
        hq.to_str().unwrap(),
        "--id",
        "redmond.hq",
        "--with-certs",
    ]);
    let config = hq.join("entente.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("listen = \"0.0.0.0:7443\"", "listen = \"0.0.0.0:99999\""),
    )
    .unwrap();
    let out = entente(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node.listen"), "{stderr}");
}

#[test]
fn certs_subcommands_build_a_federation_pki() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    ok(&["certs", "ca", "--dir", d, "--name", "Test CA"]);
    assert_eq!(mode(&dir.path().join("ca.key")), 0o600);
    // A second CA in the same directory is refused rather than overwriting the first.
    assert!(!entente(&["certs", "ca", "--dir", d]).status.success());
    ok(&[
        "certs",
        "node",
        "--dir",
        d,
        "--id",
        "berlin.office",
        "--ip",
        "192.0.2.7",
        "--dns",
        "berlin.example.org",
    ]);
    ok(&["certs", "client", "--dir", d, "--id", "researcher.uni-x"]);
    assert_eq!(mode(&dir.path().join("researcher.uni-x.key")), 0o600);
    let out = ok(&["certs", "revoke", "--dir", d, "--id", "researcher.uni-x"]);
    assert!(out.contains("crl.pem"), "{out}");
    assert!(dir.path().join("crl.pem").exists());
    // Invalid ids are refused by argument parsing.
    assert!(
        !entente(&["certs", "client", "--dir", d, "--id", "Not An Id"])
            .status
            .success()
    );

    // A CA key readable by others is refused.
    std::fs::set_permissions(
        dir.path().join("ca.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = entente(&["certs", "client", "--dir", d, "--id", "another.client"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

/// `entente init --with-certs` of redmond.hq in `dir/n`; the node's directory.
fn init_node(dir: &Path) -> std::path::PathBuf {
    let node = dir.join("n");
    ok(&[
        "init",
        "--dir",
        node.to_str().unwrap(),
        "--id",
        "redmond.hq",
        "--listen",
        "127.0.0.1:0",
        "--with-certs",
    ]);
    node
}

#[test]
fn a_data_dir_that_is_a_file_is_named_by_policy_check_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let node = init_node(dir.path());
    let config = node.join("entente.toml");
    let config = config.to_str().unwrap();
    ok(&["policy", "check", "--config", config]);

    std::fs::write(node.join("data"), "not a directory").unwrap();
    let commands: [&[&str]; 2] = [
        &["policy", "check", "--config", config],
        &["serve", "--config", config],
    ];
    for args in commands {
        let out = entente(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for part in [
            "node.data_dir",
            "is not a directory",
            &node.join("data").display().to_string(),
        ] {
            assert!(
                stderr.contains(part),
                "{args:?}: {part:?} missing from: {stderr}"
            );
        }
    }
}

#[test]
fn completions_and_the_manual_page_cover_every_subcommand() {
    let subcommands = [
        "init",
        "certs",
        "serve",
        "publish",
        "revoke",
        "query",
        "get",
        "subscribe",
        "export",
        "policy",
        "ledger",
        "store",
        "demo",
        "taxii",
        "status",
        "completions",
        "man",
    ];
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&["completions", shell]);
        assert!(script.len() > 1000, "{shell}: {script}");
        for command in subcommands {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
        for flag in ["--since", "--json", "--tlp", "--config"] {
            // fish spells a long option `-l since`.
            let fish = format!("-l {}", &flag[2..]);
            assert!(
                script.contains(flag) || script.contains(&fish),
                "{shell} lacks {flag}"
            );
        }
    }
    assert!(!entente(&["completions", "tcsh"]).status.success());

    let page = ok(&["man"]);
    for section in [
        ".TH entente 1",
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH SUBCOMMANDS",
    ] {
        assert!(page.contains(section), "{section} missing:\n{page}");
    }
    assert!(page.contains("entente\\-query(1)"), "{page}");
    for command in subcommands {
        assert!(
            page.contains(&format!("entente\\-{command}(1)")),
            "{command} missing from the manual page"
        );
    }
    // One page per command, subcommands of subcommands included.
    let dir = tempfile::tempdir().unwrap();
    ok(&["man", "--dir", dir.path().to_str().unwrap()]);
    for name in [
        "entente.1",
        "entente-query.1",
        "entente-ledger-verify.1",
        "entente-certs-node.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains(".SH SYNOPSIS"), "{name}: {text}");
    }
    let query = std::fs::read_to_string(dir.path().join("entente-query.1")).unwrap();
    assert!(query.contains("\\-\\-since"), "{query}");
    // The --limit help names no huge number as its default.
    let help = ok(&["query", "--help"]);
    assert!(help.contains("[default: all]"), "{help}");
    assert!(!help.contains("18446744073709551615"), "{help}");
}

#[test]
fn bad_times_are_explained_before_anything_else() {
    for (since, expected) in [
        (
            "yesterdy",
            "--since \"yesterdy\": not a time; expected a span back from now (30m, 24h, 7d",
        ),
        ("30", "a number needs a unit"),
        ("7y", "unknown unit \"y\""),
        ("", "--since: empty"),
    ] {
        for command in [
            &["query"][..],
            &["subscribe"],
            &["export"],
            &["ledger", "show"],
        ] {
            let mut args = command.to_vec();
            args.extend(["--config", "/nonexistent/client.toml", "--since", since]);
            let out = entente(&args);
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(expected), "{args:?}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    let out = entente(&["query", "--config", "/x.toml", "--tlp", "purple"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown TLP marking"), "{stderr}");
}

#[test]
fn setup_commands_print_json_and_json_is_refused_where_it_means_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hq = dir.path().join("hq");
    let out = ok(&[
        "init",
        "--json",
        "--dir",
        hq.to_str().unwrap(),
        "--id",
        "redmond.hq",
        "--listen",
        "127.0.0.1:0",
        "--with-certs",
    ]);
    let init: serde_json::Value = serde_json::from_str(out.trim()).expect("init --json");
    let config = hq.join("entente.toml");
    assert_eq!(init["config"], config.to_str().unwrap(), "{init}");
    assert_eq!(
        init["ca_cert"],
        hq.join("certs/ca.crt").to_str().unwrap(),
        "{init}"
    );
    assert_eq!(
        init["node_cert"],
        hq.join("certs/redmond.hq.crt").to_str().unwrap(),
        "{init}"
    );

    let certs = hq.join("certs");
    let c = certs.to_str().unwrap();
    let out = ok(&[
        "certs",
        "client",
        "--json",
        "--dir",
        c,
        "--id",
        "analyst.alice",
        "--node",
        "127.0.0.1:7443",
        "--node-id",
        "redmond.hq",
    ]);
    let issued: serde_json::Value = serde_json::from_str(out.trim()).expect("certs --json");
    assert_eq!(issued["id"], "analyst.alice", "{issued}");
    assert_eq!(issued["usage"], "client", "{issued}");
    assert_eq!(
        issued["cert"],
        certs.join("analyst.alice.crt").to_str().unwrap(),
        "{issued}"
    );
    assert_eq!(
        issued["client_config"],
        certs.join("analyst.alice.toml").to_str().unwrap(),
        "{issued}"
    );
    let out = ok(&[
        "certs",
        "revoke",
        "--json",
        "--dir",
        c,
        "--id",
        "analyst.alice",
    ]);
    let revoked: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(revoked["revoked"], "analyst.alice");
    assert_eq!(revoked["crl"], certs.join("crl.pem").to_str().unwrap());

    let out = ok(&[
        "policy",
        "check",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ]);
    let policy: serde_json::Value = serde_json::from_str(out.trim()).expect("policy check --json");
    assert_eq!(policy["node"], "redmond.hq", "{policy}");
    assert_eq!(
        policy["policy_hash"].as_str().map(str::len),
        Some(64),
        "{policy}"
    );
    assert!(
        policy["rules"].as_array().is_some_and(|r| !r.is_empty()),
        "{policy}"
    );
    // The text form names the same hash.
    let text = ok(&["policy", "check", "--config", config.to_str().unwrap()]);
    assert!(
        text.contains(&format!(
            "policy hash {}",
            policy["policy_hash"].as_str().unwrap()
        )),
        "{text}"
    );

    for args in [
        &["serve", "--json", "--config", config.to_str().unwrap()][..],
        &["demo", "--json"],
        &["completions", "bash", "--json"],
    ] {
        let out = entente(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--json is not available"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn taxii_hash_password_prints_the_hash_alone_or_as_json() {
    let hash = |json: bool| -> String {
        let mut command = Command::new(ENTENTE);
        command.args(["taxii", "hash-password"]);
        if json {
            command.arg("--json");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(b"correct horse battery staple\n").unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = hash(false);
    assert!(text.trim().starts_with("$argon2id$"), "{text}");
    let json: serde_json::Value = serde_json::from_str(hash(true).trim()).unwrap();
    assert!(
        json["password_hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("$argon2id$")),
        "{json}"
    );
    // The password itself is never printed.
    assert!(!text.contains("horse") && !json.to_string().contains("horse"));
}

/// `policy check` fails, naming the file, on a record of feeds that `serve` refuses to
/// start on, rather than passing a policy the node would never put in force.
#[test]
fn policy_check_refuses_a_damaged_record_of_feeds_as_serve_does() {
    let dir = tempfile::tempdir().unwrap();
    let node = init_node(dir.path());
    let config = node.join("entente.toml");
    let config = config.to_str().unwrap();
    std::fs::create_dir_all(node.join("data")).unwrap();
    std::fs::write(node.join("data/feeds.known"), "vendor\n../etc\n").unwrap();
    let out = entente(&["policy", "check", "--config", config]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("feeds.known"), "{stderr}");
    assert!(stderr.contains("not a feed name"), "{stderr}");
}
