//! A third-party gRPC stack (Python `grpcio`, BoringSSL) calls the node's health
//! service with a client certificate. Needs `python3` with the packages in
//! `tests/python/requirements.txt` (`.ci/run` installs them); set `ENTENTE_PYTHON`
//! to use another interpreter.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Pki, client, start, write_config};

fn python() -> String {
    std::env::var("ENTENTE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn health_check(
    pki: &Pki,
    addr: std::net::SocketAddr,
    node: &str,
    who: &str,
    service: &str,
) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/health_check.py");
    let output = Command::new(python())
        .arg(script)
        .arg(addr.to_string())
        .arg(node)
        .arg(pki.ca_cert())
        .arg(pki.certs.cert_path(who))
        .arg(pki.certs.key_path(who))
        .arg(service)
        // The machine's default roots must not be used: the test CA is passed explicitly.
        .env_remove("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH")
        .env_remove("SSL_CERT_FILE")
        .output()
        .expect("run python3 (install the packages in tests/python/requirements.txt)");
    assert!(
        output.status.success(),
        "python client failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_checks_health_with_a_client_certificate() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.client("researcher.uni-x");
    pki.client("stranger.uni-y");
    let node = start(&write_config(
        &pki,
        &hq,
        &[client("researcher.uni-x", "read_only")],
        &[],
    ))
    .await;
    let addr = node.local_addr();

    let (pki, answer, refused, unknown) = tokio::task::spawn_blocking(move || {
        let answer = health_check(
            &pki,
            addr,
            "redmond.hq",
            "researcher.uni-x",
            "entente.v1.Federation",
        );
        let unknown = health_check(
            &pki,
            addr,
            "redmond.hq",
            "researcher.uni-x",
            "no.such.Service",
        );
        // A valid certificate of an unconfigured id: the handshake is refused.
        let refused = health_check(&pki, addr, "redmond.hq", "stranger.uni-y", "");
        (pki, answer, refused, unknown)
    })
    .await
    .unwrap();
    assert_eq!(answer, "SERVING");
    assert_eq!(unknown, "NOT_FOUND");
    assert_eq!(refused, "UNAVAILABLE");
    drop(pki);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}
