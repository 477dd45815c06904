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

/// Starts `entente serve` and returns it with the address it printed.
fn serve(config: &Path) -> (Child, String) {
    let mut child = Command::new(ENTENTE)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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

    let (mut child, addr) = serve(&config);
    let out = ok(&[
        "status",
        "--config",
        config.to_str().unwrap(),
        "--node",
        &format!("redmond.hq@{addr}"),
    ]);
    assert!(out.contains("node:             redmond.hq"), "{out}");
    assert!(
        out.contains("you are:          redmond.hq (admin)"),
        "{out}"
    );

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "serve exited with {status}");
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

#[test]
fn a_data_dir_that_is_a_file_is_named_by_policy_check_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("n");
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
