//! Third-party TAXII clients against a real `entente serve` process: the Python
//! `taxii2-client` and `stix2.TAXIICollectionSource` read the node's collection as a
//! GREEN-only researcher and write to it as an analyst (`tests/python/taxii_views.py`
//! says what is checked). Needs `python3` with the packages in
//! `tests/python/requirements.txt`; set `ENTENTE_PYTHON` to use another interpreter.

mod common;

use std::process::Command;

use entente::NodeId;

use common::{Pki, node_section, serve_taxii};

fn python() -> String {
    std::env::var("ENTENTE_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn taxii2_client_and_stix2_see_the_researchers_view_while_an_analyst_publishes() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.client("researcher.uni-x");
    pki.client("analyst.soc");
    let mut text = node_section(&pki, &hq, &pki.path().join("data"));
    text.push_str(
        "\n[[client]]\nid = \"researcher.uni-x\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"GREEN\"\n\
         \n[[client]]\nid = \"analyst.soc\"\nrole = \"analyst\"\n\
         \n[taxii]\nlisten = \"127.0.0.1:0\"\n",
    );
    let config = pki.path().join("redmond.hq.toml");
    std::fs::write(&config, text).unwrap();
    let node = serve_taxii(&config);

    let path = |who: &str, what: &str| -> String {
        let id = NodeId::new(who).unwrap();
        match what {
            "cert" => pki.certs.cert_path(id.as_str()),
            _ => pki.certs.key_path(id.as_str()),
        }
        .display()
        .to_string()
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/taxii_views.py");
    let output = Command::new(python())
        .arg(script)
        .arg(format!("https://{}/taxii2/", node.taxii))
        .arg(pki.ca_cert())
        .arg(path("researcher.uni-x", "cert"))
        .arg(path("researcher.uni-x", "key"))
        .arg(path("analyst.soc", "cert"))
        .arg(path("analyst.soc", "key"))
        // The machine's default roots must not be used: the test CA is passed explicitly.
        .env_remove("SSL_CERT_FILE")
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .expect("run python3 (install the packages in tests/python/requirements.txt)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python TAXII clients failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // 7 GREEN and 3 CLEAR, and one GREEN published between each page and the next.
    let seen: usize = stdout
        .trim()
        .strip_prefix("ok ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
    assert!(seen >= 14, "{stdout}");
}
