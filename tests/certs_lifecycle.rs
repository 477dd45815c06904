//! The certificate lifecycle through the CLI, as operators run it: a member makes its
//! key and a request, the CA signs the request without the key, renews it with an
//! overlap, and warns when an id it revoked is issued again. The certificates are then
//! used over real mutual TLS against a node on port 0.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{hello, start};
use entente::NodeId;
use entente::transport::{TlsMaterial, TlsPaths};

fn entente(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run entente")
}

fn ok(args: &[&str]) -> (String, String) {
    let out = entente(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {stdout}{stderr}");
    (stdout, stderr)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn material(cert: &Path, key: &Path, ca: &Path, id: &NodeId) -> TlsMaterial {
    TlsMaterial::load(
        &TlsPaths {
            cert: cert.to_owned(),
            key: key.to_owned(),
            trust_anchors: vec![ca.to_owned()],
            crls: vec![],
        },
        id,
    )
    .expect("load TLS material")
}

#[tokio::test]
async fn request_sign_renew_and_reissue_after_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let member = dir.path().join("member");
    ok(&["certs", "ca", "--dir", s(&ca)]);
    ok(&[
        "certs",
        "node",
        "--dir",
        s(&ca),
        "--id",
        "redmond.hq",
        "--ip",
        "127.0.0.1",
    ]);

    // The member makes its key and request; only the request travels.
    ok(&[
        "certs",
        "request",
        "--id",
        "analyst.ext",
        "--out",
        s(&member),
    ]);
    let key = member.join("analyst.ext.key");
    let csr = member.join("analyst.ext.csr");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (out, _) = ok(&[
        "certs",
        "sign",
        s(&csr),
        "--ca-dir",
        s(&ca),
        "--client",
        "--id",
        "analyst.ext",
    ]);
    assert!(out.contains("issued certificate"), "{out}");
    assert!(
        !ca.join("analyst.ext.key").exists(),
        "the CA never holds the key"
    );
    let first = member.join("first.crt");
    std::fs::copy(ca.join("analyst.ext.crt"), &first).unwrap();

    // A request for another id than the CA expects is refused.
    let refused = entente(&[
        "certs",
        "sign",
        s(&csr),
        "--ca-dir",
        s(&ca),
        "--client",
        "--id",
        "analyst.other",
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not for analyst.other"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Renewal: same key, new serial; the previous certificate is kept and stays valid.
    let (out, _) = ok(&["certs", "renew", "--ca-dir", s(&ca), "--id", "analyst.ext"]);
    assert!(out.contains("stays valid until it expires"), "{out}");
    let second = member.join("second.crt");
    std::fs::copy(ca.join("analyst.ext.crt"), &second).unwrap();
    assert_ne!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap()
    );

    let hq = NodeId::new("redmond.hq").unwrap();
    let analyst = NodeId::new("analyst.ext").unwrap();
    let config = dir.path().join("hq.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = \"redmond.hq\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\ncert = \"{cert}\"\nkey = \"{nkey}\"\ntrust_anchors = [\"{anchor}\"]\ncrls = []\n\n[[client]]\nid = \"analyst.ext\"\nrole = \"analyst\"\n",
            data = dir.path().join("data").display(),
            cert = ca.join("redmond.hq.crt").display(),
            nkey = ca.join("redmond.hq.key").display(),
            anchor = ca.join("ca.crt").display(),
        ),
    )
    .unwrap();
    let node = start(&config).await;
    let anchor = ca.join("ca.crt");
    for cert in [&first, &second] {
        let answer = hello(
            &material(cert, &key, &anchor, &analyst),
            node.local_addr(),
            &hq,
        )
        .await
        .unwrap();
        assert_eq!(answer.caller_id, "analyst.ext");
    }
    node.shutdown(Duration::from_secs(10)).await.unwrap();

    // Revoked, then issued again from a new request: the CA warns.
    ok(&["certs", "revoke", "--dir", s(&ca), "--id", "analyst.ext"]);
    let renewed = entente(&["certs", "renew", "--ca-dir", s(&ca), "--id", "analyst.ext"]);
    assert!(
        !renewed.status.success(),
        "a revoked certificate is not renewed"
    );
    let again = dir.path().join("again");
    ok(&[
        "certs",
        "request",
        "--id",
        "analyst.ext",
        "--out",
        s(&again),
    ]);
    let (_, err) = ok(&[
        "certs",
        "sign",
        s(&again.join("analyst.ext.csr")),
        "--ca-dir",
        s(&ca),
        "--client",
    ]);
    assert!(
        err.contains("warning: analyst.ext was revoked before (serial "),
        "{err}"
    );
}

#[tokio::test]
async fn certificates_about_to_expire_are_warned_of_in_the_log_and_in_status() {
    use common::served::Served;
    use common::{Pki, client, write_config};
    use entente::certs::{Usage, Validity};
    let pki = Pki::new();
    let hq = NodeId::new("redmond.hq").unwrap();
    pki.certs
        .issue(
            &hq,
            &Usage::Node {
                ips: vec!["127.0.0.1".parse().unwrap()],
                dns: vec![],
            },
            Validity::days_from_now(10),
        )
        .unwrap();
    let soon = NodeId::new("analyst.soon").unwrap();
    pki.certs
        .issue(&soon, &Usage::Client, Validity::days_from_now(5))
        .unwrap();
    let later = NodeId::new("analyst.later").unwrap();
    pki.certs
        .issue(&later, &Usage::Client, Validity::days_from_now(90))
        .unwrap();
    let config = write_config(
        &pki,
        &hq,
        &[
            client("analyst.soon", "read_only"),
            client("analyst.later", "read_only"),
        ],
        &[],
    );
    let node = Served::start(&config);
    // At start: the node's own certificate (the CA has 30 days, also within the window).
    node.wait_for_log(&[
        "certificate expires soon",
        "name=redmond.hq",
        "expires in 9 days",
    ]);

    let addr: std::net::SocketAddr = node.addr.parse().unwrap();
    for who in [&soon, &later] {
        hello(&pki.material(who), addr, &hq).await.unwrap();
    }
    let out = entente(&[
        "status",
        "--config",
        s(&config),
        "--node",
        &format!("redmond.hq@{}", node.addr),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("certificate:      own redmond.hq (serial "),
        "{stdout}"
    );
    assert!(
        stdout.contains("certificate:      partner analyst.later (serial "),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: the partner certificate analyst.soon (serial ")
            && stderr.contains("expires in 4 days"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: the own certificate redmond.hq"),
        "{stderr}"
    );
    assert!(!stderr.contains("analyst.later"), "{stderr}");

    // The same as JSON.
    let out = entente(&[
        "status",
        "--json",
        "--config",
        s(&config),
        "--node",
        &format!("redmond.hq@{}", node.addr),
    ]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let certs = status["certificates"].as_array().unwrap();
    let soon_json = certs
        .iter()
        .find(|c| c["name"] == "analyst.soon")
        .expect("the partner's certificate is listed");
    assert_eq!(soon_json["role"], "partner");
    assert_eq!(soon_json["expires_soon"], true);
    assert!(soon_json["last_seen"].is_string(), "{soon_json}");
}

/// The certificates the CA keeps for `id`: `ID.crt` and every `ID.SERIAL.crt`.
fn issued_to(ca: &Path, id: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(ca)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            name.starts_with(&format!("{id}.")) && name.ends_with(".crt")
        })
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn revoking_an_id_revokes_every_certificate_the_ca_issued_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let keep = dir.path().join("keep");
    std::fs::create_dir(&keep).unwrap();
    ok(&["certs", "ca", "--dir", s(&ca)]);
    ok(&[
        "certs",
        "node",
        "--dir",
        s(&ca),
        "--id",
        "redmond.hq",
        "--ip",
        "127.0.0.1",
    ]);
    ok(&["certs", "client", "--dir", s(&ca), "--id", "analyst.ext"]);
    // What the member holds at each step: the first certificate and its key, the
    // renewal for the same key, and a renewal for a new key.
    let held = |name: &str| {
        for ext in ["crt", "key"] {
            std::fs::copy(
                ca.join(format!("analyst.ext.{ext}")),
                keep.join(format!("{name}.{ext}")),
            )
            .unwrap();
        }
    };
    held("first");
    ok(&["certs", "renew", "--ca-dir", s(&ca), "--id", "analyst.ext"]);
    held("second");
    ok(&[
        "certs",
        "renew",
        "--ca-dir",
        s(&ca),
        "--id",
        "analyst.ext",
        "--new-key",
    ]);
    held("third");
    assert_eq!(issued_to(&ca, "analyst.ext").len(), 3);

    // Revoking the id names every serial it revoked.
    let (out, _) = ok(&["certs", "revoke", "--dir", s(&ca), "--id", "analyst.ext"]);
    assert_eq!(
        out.matches("serial ").count(),
        3,
        "every certificate of the id is revoked: {out}"
    );

    let hq = NodeId::new("redmond.hq").unwrap();
    let analyst = NodeId::new("analyst.ext").unwrap();
    let config = dir.path().join("hq.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = \"redmond.hq\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\ncert = \"{cert}\"\nkey = \"{nkey}\"\ntrust_anchors = [\"{anchor}\"]\ncrls = [\"{crl}\"]\n\n[[client]]\nid = \"analyst.ext\"\nrole = \"analyst\"\n",
            data = dir.path().join("data").display(),
            cert = ca.join("redmond.hq.crt").display(),
            nkey = ca.join("redmond.hq.key").display(),
            anchor = ca.join("ca.crt").display(),
            crl = ca.join("crl.pem").display(),
        ),
    )
    .unwrap();
    let node = start(&config).await;
    let anchor = ca.join("ca.crt");
    for name in ["first", "second", "third"] {
        let answer = hello(
            &material(
                &keep.join(format!("{name}.crt")),
                &keep.join(format!("{name}.key")),
                &anchor,
                &analyst,
            ),
            node.local_addr(),
            &hq,
        )
        .await;
        assert!(
            answer.is_err(),
            "the {name} certificate of a revoked id is refused"
        );
    }
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[test]
fn one_certificate_of_an_id_is_revoked_by_its_serial() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ok(&["certs", "ca", "--dir", s(&ca)]);
    ok(&["certs", "client", "--dir", s(&ca), "--id", "analyst.ext"]);
    ok(&[
        "certs",
        "renew",
        "--ca-dir",
        s(&ca),
        "--id",
        "analyst.ext",
        "--new-key",
    ]);
    let old = issued_to(&ca, "analyst.ext")
        .into_iter()
        .find(|path| !path.ends_with("analyst.ext.crt"))
        .unwrap();
    let serial = old
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_start_matches("analyst.ext.")
        .trim_end_matches(".crt")
        .to_owned();
    let (out, _) = ok(&[
        "certs",
        "revoke",
        "--dir",
        s(&ca),
        "--id",
        "analyst.ext",
        "--serial",
        &serial,
    ]);
    assert!(out.contains(&format!("serial {serial}")), "{out}");
    assert_eq!(out.matches("serial ").count(), 1, "{out}");
    let register = std::fs::read_to_string(ca.join("revoked.toml")).unwrap();
    assert_eq!(register.matches("serial = ").count(), 1, "{register}");
    // The current certificate is not revoked: it can still be renewed.
    ok(&["certs", "renew", "--ca-dir", s(&ca), "--id", "analyst.ext"]);

    // A serial that is not one of the id's certificates is refused, naming them.
    let wrong = entente(&[
        "certs",
        "revoke",
        "--dir",
        s(&ca),
        "--id",
        "analyst.ext",
        "--serial",
        "abcdef",
    ]);
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("no certificate of analyst.ext"), "{err}");
}

#[test]
fn a_request_for_a_client_certificate_under_a_nodes_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let member = dir.path().join("member");
    ok(&["certs", "ca", "--dir", s(&ca)]);
    ok(&[
        "certs",
        "node",
        "--dir",
        s(&ca),
        "--id",
        "redmond.hq",
        "--ip",
        "127.0.0.1",
    ]);
    let node_cert = std::fs::read(ca.join("redmond.hq.crt")).unwrap();
    ok(&[
        "certs",
        "request",
        "--id",
        "redmond.hq",
        "--out",
        s(&member),
    ]);
    let refused = entente(&[
        "certs",
        "sign",
        s(&member.join("redmond.hq.csr")),
        "--ca-dir",
        s(&ca),
        "--client",
    ]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("already has a node certificate"), "{err}");
    assert_eq!(
        std::fs::read(ca.join("redmond.hq.crt")).unwrap(),
        node_cert,
        "the node's certificate stays"
    );
}

#[test]
fn a_signed_request_moves_the_cas_copy_of_the_old_key_aside_and_days_must_be_positive() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let member = dir.path().join("member");
    ok(&["certs", "ca", "--dir", s(&ca)]);
    let never_valid = entente(&[
        "certs",
        "node",
        "--dir",
        s(&ca),
        "--id",
        "berlin.office",
        "--days",
        "0",
    ]);
    assert!(!never_valid.status.success(), "a certificate of 0 days");
    ok(&["certs", "node", "--dir", s(&ca), "--id", "berlin.office"]);
    ok(&[
        "certs",
        "request",
        "--id",
        "berlin.office",
        "--out",
        s(&member),
    ]);
    ok(&[
        "certs",
        "sign",
        s(&member.join("berlin.office.csr")),
        "--ca-dir",
        s(&ca),
        "--node",
        "--id",
        "berlin.office",
    ]);
    assert!(
        !ca.join("berlin.office.key").exists(),
        "the key of the certificate moved aside no longer sits beside the new one"
    );
    let kept_keys = std::fs::read_dir(&ca)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_str().unwrap();
            name.starts_with("berlin.office.") && name.ends_with(".key")
        })
        .count();
    assert_eq!(kept_keys, 1, "the old key is kept beside its certificate");
}

#[test]
fn two_cas_made_without_a_name_do_not_share_one() {
    let dir = tempfile::tempdir().unwrap();
    let subject = |ca: &Path| {
        let der = entente::transport::files::read_certificates(&ca.join("ca.crt")).unwrap();
        let (_, cert) =
            <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<
                '_,
                x509_parser::error::X509Error,
            >>::from_der(der[0].as_ref())
            .unwrap();
        cert.subject().to_string()
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(&["certs", "ca", "--dir", s(&a)]);
    ok(&["certs", "ca", "--dir", s(&b)]);
    assert_ne!(subject(&a), subject(&b));
    assert!(
        subject(&a).contains("Entente federation CA"),
        "{}",
        subject(&a)
    );
}

/// A key whose certificate the CA revoked is not certified again: the member's request
/// made with `--key` for that key is refused, while a request with a new key is signed.
#[test]
fn a_revoked_key_is_not_certified_again() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let member = dir.path().join("member");
    ok(&["certs", "ca", "--dir", s(&ca)]);
    let request = |key: Option<&Path>| {
        let mut args = vec![
            "certs",
            "request",
            "--id",
            "berlin.office",
            "--out",
            s(&member),
        ];
        if let Some(key) = key {
            args.extend(["--key", s(key)]);
        }
        ok(&args);
        let kept = dir.path().join("kept.key");
        if key.is_none() {
            std::fs::copy(member.join("berlin.office.key"), &kept).unwrap();
        }
        kept
    };
    let sign = || {
        entente(&[
            "certs",
            "sign",
            s(&member.join("berlin.office.csr")),
            "--ca-dir",
            s(&ca),
            "--client",
        ])
    };
    let key = request(None);
    assert!(sign().status.success());
    ok(&["certs", "revoke", "--dir", s(&ca), "--id", "berlin.office"]);
    // The revoked certificate's file is not what keeps its key out: the register
    // records the key (it was the only record before).
    for entry in std::fs::read_dir(&ca).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("berlin.office") && name.ends_with(".crt") {
            std::fs::remove_file(&path).unwrap();
        }
    }

    // The same key again: refused, naming the revoked certificate.
    std::fs::remove_file(member.join("berlin.office.key")).unwrap();
    std::fs::remove_file(member.join("berlin.office.csr")).unwrap();
    request(Some(&key));
    let refused = sign();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("which this CA revoked"), "{err}");

    // A new key: signed.
    std::fs::remove_file(member.join("berlin.office.csr")).unwrap();
    let _ = std::fs::remove_file(member.join("berlin.office.key"));
    request(None);
    let signed = sign();
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
}
