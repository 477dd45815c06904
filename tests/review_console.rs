//! Attacks on the admin listener (`[admin]`): refusals that went out without the headers
//! that keep a browser from running anything of them, `Host` checks a crafted request
//! could pass, a page elsewhere making the operator's browser write to the disclosure
//! ledger, and connections held open for nothing. One node in-process, its admin
//! listener on 127.0.0.1:0, raw HTTP over TCP.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Pki;
use entente::NodeId;
use entente::client::NodeClient;
use entente::model::ItemId;
use entente::rpc::proto::PublishRequest;
use entente::wire::{self, Tlp};

/// Sends `request` as it is and reads the answer to its end: (status, head, body).
fn exchange(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the admin listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or((response.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// A GET of `target` with the given extra header lines, one request per connection.
fn get(addr: SocketAddr, target: &str, headers: &str) -> (u16, String, String) {
    exchange(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"),
    )
}

/// The longest a console connection is served (`console::CONNECTION_LIFETIME`).
const LIFETIME: Duration = Duration::from_secs(30);

fn has_csp(head: &str) -> bool {
    head.to_ascii_lowercase()
        .contains("content-security-policy: default-src 'none'")
}

/// A node with an analyst client and an admin listener on 127.0.0.1:0.
async fn node_with_console(pki: &Pki) -> entente::Node {
    let hq = pki.node("hq.a");
    pki.client("analyst.alice");
    let path = common::write_config(
        pki,
        &hq,
        &[
            common::client("analyst.alice", "analyst"),
            common::peer("office.b", "127.0.0.1:9"),
        ],
        &[],
    );
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&path, text).unwrap();
    common::start(&path).await
}

/// Every answer, refusals included, tells the browser to run nothing and to show it in
/// no frame: the refusals made before a page is reached (a method other than GET, a body,
/// a foreign `Host`, a long target) went out without those headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_protective_headers() {
    let pki = Pki::new();
    let node = node_with_console(&pki).await;
    let admin = node.admin_addr().unwrap();
    let long = format!("/ledger?value={}", "a".repeat(5000));
    let cases = [
        (
            format!("GET / HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"),
            200,
        ),
        (
            format!("GET /nothing HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"),
            404,
        ),
        (
            format!(
                "POST / HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            405,
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
            ),
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_owned(),
            421,
        ),
        (
            format!("GET {long} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"),
            414,
        ),
    ];
    for (request, status) in cases {
        let (got, head, body) = exchange(admin, &request);
        let line = request
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(60)
            .collect::<String>();
        assert_eq!(got, status, "{line}: {head}");
        assert!(has_csp(&head), "{line}: no CSP in\n{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("x-content-type-options: nosniff"),
            "{line}: {head}"
        );
        assert!(!body.contains("<script"), "{body}");
    }
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// `Host` names that are not this host's loopback, given alone, twice, or hidden behind
/// an absolute-form target, are refused; loopback names in their usual spellings pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_loopback_host_is_served() {
    let pki = Pki::new();
    let node = node_with_console(&pki).await;
    let admin = node.admin_addr().unwrap();
    let port = admin.port();
    let ask = |head: String| exchange(admin, &format!("{head}Connection: close\r\n\r\n")).0;
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_owned(),
        format!("localhost:{port}"),
        "LOCALHOST".to_owned(),
        "[::1]".to_owned(),
    ] {
        assert_eq!(
            ask(format!("GET / HTTP/1.1\r\nHost: {host}\r\n")),
            200,
            "{host}"
        );
    }
    for host in [
        "localhost.evil.example".to_owned(),
        "127.0.0.1.nip.io".to_owned(),
        format!("127.0.0.1.nip.io:{port}"),
        "localhost.".to_owned(),
        "127.1".to_owned(),
        "2130706433".to_owned(),
        "[::ffff:7f00:1]".to_owned(),
        "evil.example:80".to_owned(),
        "127.0.0.1@evil.example".to_owned(),
        String::new(),
    ] {
        assert_eq!(
            ask(format!("GET / HTTP/1.1\r\nHost: {host}\r\n")),
            421,
            "{host:?}"
        );
    }
    // No Host at all.
    assert_eq!(ask("GET / HTTP/1.0\r\n".to_owned()), 421);
    // Two Host headers, the first a loopback name: which one an intermediary or a
    // browser extension took cannot be known, so neither is.
    assert_eq!(
        ask(format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n"
        )),
        421
    );
    // An absolute-form target naming another host, with a loopback Host.
    assert_eq!(
        ask(format!(
            "GET http://evil.example/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        )),
        421
    );
    assert_eq!(
        ask(format!(
            "GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        )),
        200
    );
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// The ledger's record count as the overview shows it.
fn ledger_records(admin: SocketAddr) -> u64 {
    let (status, _, body) = get(admin, "/", "");
    assert_eq!(status, 200);
    let (_, rest) = body
        .split_once("id=\"ledger-records\">")
        .expect("ledger records on the overview");
    rest.split('<').next().unwrap().trim().parse().unwrap()
}

/// An explain writes a ledger record (the operator's view of the item). A page the
/// operator visits could have the browser ask for `/explain?partner=…&item=…` (an image,
/// a link), and each such request wrote a record: the page could fill the ledger and
/// the disk with views the operator never asked for. Now a browser's request from
/// another site is refused, and an explain is made only with the token of the console's
/// own form; the form, filled in and sent, still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_elsewhere_cannot_make_the_console_write_to_the_ledger() {
    let pki = Pki::new();
    let node = node_with_console(&pki).await;
    let admin = node.admin_addr().unwrap();
    let who = NodeId::new("analyst.alice").unwrap();
    let analyst = NodeClient::connect(
        pki.material(&who).client_config().unwrap(),
        &who,
        &node.local_addr().to_string(),
        node.id(),
    )
    .await
    .unwrap();
    let id = ItemId::new_random().to_string();
    analyst
        .publish(tokio_stream::iter(vec![PublishRequest {
            items: vec![wire::Item {
                id: id.clone(),
                modified_unix_ms: 0,
                tlp: Tlp::Green as i32,
                tags: vec![],
                kind: Some(wire::item::Kind::Indicator(wire::Indicator {
                    indicator_type: "domain".into(),
                    value: "explained.example".into(),
                    ..Default::default()
                })),
            }],
            distribution: Some(wire::Distribution {
                max_hops: None,
                recipients: vec![],
            }),
            groups: vec![],
        }]))
        .await
        .unwrap();
    let target = format!("/explain?partner=office.b&item={id}");
    let before = ledger_records(admin);

    // As an <img> on another site would ask, in a browser that sends fetch metadata.
    let (status, head, _) = get(
        admin,
        &target,
        "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: image\r\n",
    );
    assert_eq!(status, 403, "{head}");
    assert!(has_csp(&head), "{head}");
    // From a same-site page on another port of localhost, or with a foreign Origin.
    assert_eq!(get(admin, &target, "Sec-Fetch-Site: same-site\r\n").0, 403);
    assert_eq!(
        get(admin, &target, "Origin: http://evil.example\r\n").0,
        403
    );
    // In a browser that sends none: no explain is made without the form's token.
    let (status, _, body) = get(admin, &target, "");
    assert_eq!(status, 200);
    assert!(!body.contains("id=\"decision\""), "{body}");
    assert!(body.contains("not asked from this console"), "{body}");
    let (_, _, body) = get(admin, &format!("{target}&confirm=00"), "");
    assert!(!body.contains("id=\"decision\""), "{body}");
    assert_eq!(ledger_records(admin), before, "a record was written");

    // The console's own form: its token, sent back from the console's page.
    let (_, _, form) = get(admin, "/explain", "Sec-Fetch-Site: none\r\n");
    let token = form
        .split_once("name=\"confirm\" value=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(token, _)| token.to_owned())
        .expect("the form carries its token");
    let (status, _, body) = get(
        admin,
        &format!("{target}&confirm={token}"),
        &format!("Sec-Fetch-Site: same-origin\r\nOrigin: http://{admin}\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("id=\"decision\""), "{body}");
    assert_eq!(ledger_records(admin), before + 1);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// Connections that send nothing, or send a request and never read its answer, do not
/// keep the console from others for long: each is closed within its deadline and its
/// slot taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_keep_the_console_away() {
    let pki = Pki::new();
    let node = node_with_console(&pki).await;
    let admin = node.admin_addr().unwrap();
    // Every slot taken by a connection that sends nothing, or a request never read.
    let mut held = Vec::new();
    for i in 0..entente::console::MAX_CONNECTIONS {
        let mut stream = TcpStream::connect(admin).unwrap();
        if i % 2 == 0 {
            write!(stream, "GET / HTTP/1.1\r\nHost: {admin}\r\n\r\n").unwrap();
        }
        held.push(stream);
    }
    let start = Instant::now();
    let (status, _, _) = get(admin, "/metrics", "");
    assert_eq!(status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "served after {:?}",
        start.elapsed()
    );
    drop(held);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// A client that sends requests one after the other on one connection and never reads
/// the answers: once the socket buffers are full, the listener waits to write, which no
/// head timeout covers, and the connection held its slot for good (64 of them kept the
/// console from everyone). A connection now lives at most its lifetime and is then
/// closed, which the writer sees as an error on its blocked write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_let_go() {
    let pki = Pki::new();
    let node = node_with_console(&pki).await;
    let admin = node.admin_addr().unwrap();
    let mut stream = TcpStream::connect(admin).unwrap();
    let request = format!("GET /nothing HTTP/1.1\r\nHost: {admin}\r\n\r\n").repeat(64);
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Writes until the listener closes the connection (or the test ends).
        let result = loop {
            if let Err(error) = stream.write_all(request.as_bytes()) {
                break error;
            }
        };
        let _ = done.send(result.kind());
    });
    let deadline = LIFETIME + Duration::from_secs(30);
    let kind = tokio::task::spawn_blocking(move || ended.recv_timeout(deadline))
        .await
        .unwrap()
        .expect("the connection was still open past its lifetime");
    assert!(
        matches!(
            kind,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{kind:?}"
    );
    // And the console answers others meanwhile and after.
    assert_eq!(get(admin, "/metrics", "").0, 200);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// `admin.listen` takes a loopback address only, in every spelling, at load and at
/// reload (a reload naming another address is refused and changes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_stays_on_loopback_at_load_and_reload() {
    let pki = Pki::new();
    let node = node_with_console(&pki).await;
    let admin = node.admin_addr().unwrap();
    let path = pki.path().join("hq.a.toml");
    let base = std::fs::read_to_string(&path).unwrap();
    for listen in [
        "0.0.0.0:9464",
        "[::]:9464",
        "[::ffff:127.0.0.1]:9464",
        "127.1:9464",
        "0x7f000001:9464",
        "localhost:9464",
        "ip6-localhost:9464",
        "192.0.2.1:9464",
    ] {
        let text = base.replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"{listen}\""),
        );
        assert_ne!(text, base);
        std::fs::write(&path, &text).unwrap();
        let err = entente::Config::load(&path).expect_err(listen).to_string();
        assert!(err.contains("admin.listen"), "{listen}: {err}");
    }
    // At reload, by the operator: refused, and the listener goes on where it was.
    let hq = NodeId::new("hq.a").unwrap();
    let operator = NodeClient::connect(
        pki.material(&hq).client_config().unwrap(),
        &hq,
        &node.local_addr().to_string(),
        &hq,
    )
    .await
    .unwrap();
    let err = operator.reload_policy().await.unwrap_err().to_string();
    assert!(err.contains("admin.listen"), "{err}");
    assert_eq!(get(admin, "/", "").0, 200);
    std::fs::write(&path, &base).unwrap();
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}
