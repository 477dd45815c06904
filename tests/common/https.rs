//! HTTPS requests to a node's TAXII listener as the tests make them: one HTTP/1.1
//! request per connection, under a client certificate, and the STIX indicators they
//! post.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use entente::NodeId;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Pki;

/// The TAXII 2.1 media type.
pub const TAXII: &str = "application/taxii+json;version=2.1";

/// An answer: status, headers (names in lower case), body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value of header `name` (in lower case), if the answer has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn tls(pki: &Pki, who: &str) -> Arc<rustls::ClientConfig> {
    let id = NodeId::new(who).unwrap();
    let mut config = (*pki.material(&id).client_config().unwrap()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One HTTP/1.1 request on a new connection.
pub async fn send(
    tls: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Reply {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let mut stream = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: {TAXII}\r\n"
    );
    if method == "POST" {
        head.push_str(&format!(
            "Content-Type: {TAXII}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    // `write_all` on a TLS stream may return with the last records still in the TLS
    // layer's buffer (when the socket was full as it took them): without a flush the
    // node waits for the rest of the body and the client for an answer.
    stream.flush().await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

pub async fn get(tls: &Arc<rustls::ClientConfig>, addr: SocketAddr, path: &str) -> Reply {
    send(tls, addr, "GET", path, b"").await
}

/// POSTs `objects` in one envelope to `path` as `writer`, expects 202 and returns the
/// status resource.
pub async fn post_objects(
    writer: &Arc<rustls::ClientConfig>,
    node: &super::TaxiiNode,
    path: &str,
    objects: Vec<Value>,
) -> Value {
    let posted = post(
        writer,
        node.taxii,
        path,
        &json!({ "objects": objects }).to_string(),
    )
    .await;
    assert_eq!(posted.status, 202, "{}", posted.text());
    posted.json()
}

/// The path of the TAXII collection's objects on `node`, as `tls` finds it.
pub async fn objects_path(tls: &Arc<rustls::ClientConfig>, node: &super::TaxiiNode) -> String {
    let listed = get(tls, node.taxii, "/api/collections/").await.json();
    let id = listed["collections"][0]["id"].as_str().unwrap().to_owned();
    format!("/api/collections/{id}/objects/")
}

pub async fn post(
    tls: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> Reply {
    send(tls, addr, "POST", path, body.as_bytes()).await
}

/// A STIX indicator of a domain name under `marking`.
pub fn indicator(id: &str, domain: &str, marking: &str) -> Value {
    json!({
        "type": "indicator",
        "spec_version": "2.1",
        "id": id,
        "created": "2025-01-01T00:00:00.000Z",
        "modified": "2025-01-02T00:00:00.000Z",
        "pattern": format!("[domain-name:value = '{domain}']"),
        "pattern_type": "stix",
        "valid_from": "2025-01-01T00:00:00Z",
        "object_marking_refs": [marking],
    })
}
