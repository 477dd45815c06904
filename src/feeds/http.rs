//! The HTTP client of the feeds: one GET per connection, over rustls (ring provider,
//! public roots plus a feed's own CA file) or plain TCP, with a deadline per request and
//! a body refused before it is read whole when it is larger than allowed. Answers may
//! come gzip-encoded (the request offers it); the limit then holds for the body
//! decompressed as well. Up to
//! [`MAX_REDIRECTS`] redirects are followed, to the same scheme only (never from https
//! to http), and over plain http only to the same host and port; the credentials go
//! only to the feed's own host and port. Credentials go only into the `Authorization`
//! header, never into an error or a log line. A feed's `proxy` tunnels every
//! connection through an HTTP proxy with `CONNECT`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use super::FeedError;
use crate::config::{FeedConfig, PasswordSource};

/// Largest password read from `password_file`.
const MAX_PASSWORD_BYTES: u64 = 4096;
/// How long reading a feed's password may take.
const PASSWORD_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Most redirects followed for one request.
pub(super) const MAX_REDIRECTS: usize = 5;

/// Longest `Location` taken from a redirect.
const MAX_LOCATION_BYTES: usize = 2048;

/// What one exchange gave: an answer read whole, or where a redirect points.
enum Exchange {
    Done(Response),
    Redirect(http::Uri),
}

/// A response whose status was 200 and whose body was read whole.
pub(super) struct Response {
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

/// The client of one feed: its TLS configuration and its limits.
pub(super) struct Client {
    tls: Option<tokio_rustls::TlsConnector>,
    timeout: Duration,
    max_body: usize,
    credentials: Option<crate::config::FeedCredentials>,
    /// The feed's own host and port: the only one the credentials are sent to.
    home: Option<http::uri::Authority>,
    /// The HTTP proxy every connection is tunnelled through, if any.
    proxy: Option<http::uri::Authority>,
    accept: &'static str,
}

impl Client {
    /// The client of `feed`; `accept` is the media type asked for.
    pub(super) fn new(feed: &FeedConfig, accept: &'static str) -> Result<Self, FeedError> {
        let tls = if feed.url.scheme_str() == Some("https") {
            Some(tokio_rustls::TlsConnector::from(Arc::new(tls_config(
                feed,
            )?)))
        } else {
            None
        };
        Ok(Self {
            tls,
            timeout: feed.timeout,
            max_body: feed.max_response_bytes,
            credentials: feed.credentials.clone(),
            home: feed.url.authority().cloned(),
            proxy: feed.proxy.clone(),
            accept,
        })
    }

    /// GETs `uri` and reads the body, following redirects, within the feed's timeout.
    pub(super) async fn get(&self, uri: &http::Uri) -> Result<Response, FeedError> {
        match tokio::time::timeout(self.timeout, self.get_following(uri)).await {
            Ok(result) => result,
            Err(_) => Err(FeedError::Http(format!(
                "no complete answer from {} within {}s (timeout)",
                shown(uri),
                self.timeout.as_secs()
            ))),
        }
    }

    async fn get_following(&self, uri: &http::Uri) -> Result<Response, FeedError> {
        let mut at = uri.clone();
        for _ in 0..=MAX_REDIRECTS {
            match self.exchange(&at).await? {
                Exchange::Done(response) => return Ok(response),
                Exchange::Redirect(next) => at = next,
            }
        }
        Err(FeedError::Http(format!(
            "{} redirects more than {MAX_REDIRECTS} times",
            shown(uri)
        )))
    }

    async fn exchange(&self, uri: &http::Uri) -> Result<Exchange, FeedError> {
        let host = uri
            .host()
            .ok_or_else(|| FeedError::Http(format!("{} names no host", shown(uri))))?;
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = match &self.proxy {
            None => tokio::net::TcpStream::connect((bare_host, port))
                .await
                .map_err(|e| FeedError::Http(format!("cannot connect to {}: {e}", shown(uri))))?,
            Some(proxy) => tunnel(proxy, host, port).await?,
        };
        let _ = tcp.set_nodelay(true);
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(
                uri.path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
                    .to_owned(),
            )
            .header(
                http::header::HOST,
                uri.authority().map(|a| a.as_str()).unwrap_or(host),
            )
            .header(http::header::ACCEPT, self.accept)
            .header(http::header::ACCEPT_ENCODING, "gzip")
            .header(
                http::header::USER_AGENT,
                concat!("entente/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::CONNECTION, "close");
        let home = uri.authority() == self.home.as_ref();
        if let Some(credentials) = self.credentials.as_ref().filter(|_| home) {
            // Read off the async workers, and given up on after a while: a password file
            // on a hung mount must not stall the node's other tasks, nor this feed for ever.
            let source = credentials.password.clone();
            let password = tokio::time::timeout(
                PASSWORD_READ_TIMEOUT,
                tokio::task::spawn_blocking(move || read_password(&source)),
            )
            .await
            .map_err(|_| {
                FeedError::Config(format!(
                    "the password could not be read within {} s",
                    PASSWORD_READ_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|_| FeedError::Config("the password could not be read".into()))??;
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", credentials.username, password));
            let mut value = http::HeaderValue::from_str(&format!("Basic {token}"))
                .map_err(|_| FeedError::Config("the password cannot be sent in a header".into()))?;
            value.set_sensitive(true);
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let request = request
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| FeedError::Http(format!("cannot build the request: {e}")))?;
        let (response, _connection) = match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(bare_host.to_owned()).map_err(|_| {
                    FeedError::Http(format!("{host:?} is not a valid TLS server name"))
                })?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| FeedError::Http(format!("TLS with {} failed: {e}", shown(uri))))?;
                send(TokioIo::new(stream), request, uri).await?
            }
            None => send(TokioIo::new(tcp), request, uri).await?,
        };
        let status = response.status();
        if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
            return redirect_target(uri, response.headers()).map(Exchange::Redirect);
        }
        if status != http::StatusCode::OK {
            return Err(FeedError::Http(format!(
                "{} answered {status}{}",
                shown(uri),
                match status.as_u16() {
                    401 | 403 => " (check username and password)",
                    _ => "",
                }
            )));
        }
        let (parts, mut body) = response.into_parts();
        // Refused before anything is read when the server says how much is coming.
        if let Some(length) = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            if length > self.max_body as u64 {
                return Err(FeedError::TooLarge(format!(
                    "the answer of {} is {length} bytes, over max_response_bytes ({}); refused before reading it",
                    shown(uri),
                    self.max_body
                )));
            }
        }
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                FeedError::Http(format!("reading the answer of {} failed: {e}", shown(uri)))
            })?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > self.max_body {
                    return Err(FeedError::TooLarge(format!(
                        "the answer of {} passed max_response_bytes ({}) while it was read; the rest was not read",
                        shown(uri),
                        self.max_body
                    )));
                }
                out.extend_from_slice(&data);
            }
        }
        let body = match content_encoding(&parts.headers, uri)? {
            Encoding::Identity => out,
            Encoding::Gzip => {
                let max = self.max_body;
                let shown_uri = shown(uri);
                tokio::task::spawn_blocking(move || gunzip(&out, max, &shown_uri))
                    .await
                    .map_err(|e| {
                        FeedError::Http(format!("decompressing an answer failed: {e}"))
                    })??
            }
        };
        Ok(Exchange::Done(Response {
            headers: parts.headers,
            body,
        }))
    }
}

/// How an answer's body is encoded.
enum Encoding {
    Identity,
    Gzip,
}

/// The answer's `Content-Encoding`: none (or `identity`), or gzip, the one the request
/// offers. Any other is refused by name rather than read as JSON.
fn content_encoding(headers: &http::HeaderMap, uri: &http::Uri) -> Result<Encoding, FeedError> {
    let mut encoding = Encoding::Identity;
    for value in headers.get_all(http::header::CONTENT_ENCODING) {
        for token in value.to_str().unwrap_or("?").split(',') {
            match token.trim().to_ascii_lowercase().as_str() {
                "" | "identity" => {}
                "gzip" | "x-gzip" if matches!(encoding, Encoding::Identity) => {
                    encoding = Encoding::Gzip;
                }
                other => {
                    let other: String = other.chars().take(40).collect();
                    return Err(FeedError::Http(format!(
                        "{} answered with Content-Encoding {other:?}, which this node does not read (it asks for gzip or none)",
                        shown(uri)
                    )));
                }
            }
        }
    }
    Ok(encoding)
}

/// The body of a gzip answer, refused once it passes `max` bytes decompressed: the
/// limit on an answer holds for what it expands to, not only for what crossed the wire.
fn gunzip(body: &[u8], max: usize, shown_uri: &str) -> Result<Vec<u8>, FeedError> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(body)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            FeedError::Http(format!(
                "the gzip answer of {shown_uri} cannot be decompressed: {e}"
            ))
        })?;
    if out.len() > max {
        return Err(FeedError::TooLarge(format!(
            "the answer of {shown_uri} passed max_response_bytes ({max}) once decompressed; the rest was not read"
        )));
    }
    Ok(out)
}

/// Where a redirect from `from` may lead: its `Location`, absolute or relative to
/// `from`, in the same scheme (never https to http, nor http to https), and over plain
/// http only to the same host and port (the configuration allowed that one).
fn redirect_target(from: &http::Uri, headers: &http::HeaderMap) -> Result<http::Uri, FeedError> {
    let refused = |why: &str| FeedError::Http(format!("{} redirects {why}", shown(from)));
    let location = headers
        .get(http::header::LOCATION)
        .ok_or_else(|| refused("without a Location"))?
        .to_str()
        .map_err(|_| refused("to a Location that is not text"))?
        .trim();
    if location.len() > MAX_LOCATION_BYTES {
        return Err(refused("to a Location that is too long"));
    }
    let scheme = from.scheme_str().unwrap_or("http");
    let authority = from.authority().map(|a| a.as_str()).unwrap_or("");
    let text = if location.contains("://") {
        location.to_owned()
    } else if location.starts_with("//") {
        format!("{scheme}:{location}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let path = from.path();
        let dir = &path[..path.rfind('/').map_or(0, |at| at + 1)];
        format!("{scheme}://{authority}{dir}{location}")
    };
    let target: http::Uri = text
        .parse()
        .map_err(|_| refused("to a Location that is not a URL"))?;
    if target.scheme_str() != Some(scheme) {
        return Err(refused(&format!(
            "to {}, another scheme; only redirects within {scheme} are followed",
            shown(&target)
        )));
    }
    if target.host().is_none_or(str::is_empty) {
        return Err(refused("to a URL that names no host"));
    }
    if target.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(refused("to a URL with credentials in it"));
    }
    if scheme == "http" && target.authority() != from.authority() {
        return Err(refused(&format!(
            "to {}; over plain http only redirects to the same host and port are followed",
            shown(&target)
        )));
    }
    Ok(target)
}

/// Longest answer head read from a proxy.
const MAX_PROXY_HEAD_BYTES: usize = 8 * 1024;

/// A connection to `host:port` through the HTTP proxy `proxy` (`CONNECT`): what is
/// sent after it, TLS included, goes to `host` as if connected directly. Nothing of the
/// feed's credentials is sent to the proxy.
async fn tunnel(
    proxy: &http::uri::Authority,
    host: &str,
    port: u16,
) -> Result<tokio::net::TcpStream, FeedError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let failed = |what: String| FeedError::Http(format!("proxy {proxy}: {what}"));
    let proxy_host = proxy.host().trim_start_matches('[').trim_end_matches(']');
    let mut tcp = tokio::net::TcpStream::connect((proxy_host, proxy.port_u16().unwrap_or(80)))
        .await
        .map_err(|e| failed(format!("cannot connect: {e}")))?;
    let target = format!("{host}:{port}");
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| failed(e.to_string()))?;
    // Read byte by byte up to the end of the head, so nothing of the tunnel is taken.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_PROXY_HEAD_BYTES {
            return Err(failed(format!(
                "its answer to CONNECT is longer than {MAX_PROXY_HEAD_BYTES} bytes"
            )));
        }
        let byte = tcp
            .read_u8()
            .await
            .map_err(|e| failed(format!("no answer to CONNECT: {e}")))?;
        head.push(byte);
    }
    let status = head
        .split(|b| *b == b' ')
        .nth(1)
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(tcp),
        Some(code) => Err(failed(format!("CONNECT to {target} answered {code}"))),
        None => Err(failed("its answer to CONNECT is not HTTP".into())),
    }
}

async fn send<S>(
    io: TokioIo<S>,
    request: http::Request<http_body_util::Empty<bytes::Bytes>>,
    uri: &http::Uri,
) -> Result<(http::Response<hyper::body::Incoming>, AbortOnDrop), FeedError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .handshake(io)
        .await
        .map_err(|e| FeedError::Http(format!("HTTP with {} failed: {e}", shown(uri))))?;
    // The connection is driven by its own task, stopped when the caller is done with
    // the answer (or gives up on it): a server that never closes keeps nothing running.
    let connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| FeedError::Http(format!("HTTP with {} failed: {e}", shown(uri))))?;
    Ok((response, connection))
}

/// A task aborted when this is dropped.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A URL as it may appear in errors and logs: scheme, authority and path, no query.
pub(super) fn shown(uri: &http::Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or(""),
        uri.path()
    )
}

fn read_password(source: &PasswordSource) -> Result<String, FeedError> {
    match source {
        PasswordSource::Env(name) => std::env::var(name).map_err(|_| {
            FeedError::Config(format!(
                "password_env: the environment variable {name} is not set (or not UTF-8)"
            ))
        }),
        PasswordSource::File(path) => {
            let problem = |what: String| {
                FeedError::Config(format!("password_file {}: {what}", path.display()))
            };
            // A password file others may read is refused, as a private key is.
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| problem(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(problem(format!(
                    "mode {:04o}: it must be readable by its owner only (chmod 600 {})",
                    mode & 0o777,
                    path.display()
                )));
            }
            let bytes = match crate::util::read_small_file(path, MAX_PASSWORD_BYTES) {
                Ok(bytes) => bytes,
                Err(crate::util::SmallFileError::TooLarge) => {
                    return Err(problem(format!("larger than {MAX_PASSWORD_BYTES} bytes")));
                }
                Err(other) => return Err(problem(other.to_string())),
            };
            let text = String::from_utf8(bytes).map_err(|_| problem("not UTF-8".into()))?;
            Ok(text.trim_end_matches(['\r', '\n']).to_owned())
        }
    }
}

/// TLS for a feed: the ring provider, the public web roots and the feed's `ca_file`.
fn tls_config(feed: &FeedConfig) -> Result<rustls::ClientConfig, FeedError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &feed.ca_file {
        let certs = crate::transport::files::read_certificates(path)
            .map_err(|e| FeedError::Config(format!("ca_file: {e}")))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| FeedError::Config(format!("ca_file {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FeedError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let source = PasswordSource::File(path.clone());
        let refused = read_password(&source).unwrap_err().to_string();
        assert!(refused.contains("chmod 600"), "{refused}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password(&source).unwrap(), "secret");
        // A FIFO would block the reader until someone writes to it: refused unread.
        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path this test owns.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let refused = read_password(&PasswordSource::File(fifo))
            .unwrap_err()
            .to_string();
        assert!(refused.contains("not a regular file"), "{refused}");
    }
}
