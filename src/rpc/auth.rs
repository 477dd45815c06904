//! Who is calling, and may they call this method. Every request carries the
//! [`ConnectionInfo`] the listener attached to its connection; the
//! [`RequireIdentity`] layer in front of every service (health and reflection
//! included) authorises each request against the [`Directory`] in force when it
//! arrives, replacing the partner with the one configured now, and refuses a
//! request without an identity or from a connection that lost access. It also marks
//! each authorised call in progress on its connection until its response has ended
//! (a stream's, when the stream ends), so that only connections with no call in
//! progress are closed as idle (`limits.idle_connection_timeout`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::{Request, Status};

use crate::engine::AnswerHold;
use crate::model::Role;
use crate::transport::access::CallInProgress;
use crate::transport::{ConnectionInfo, Directory, PartnerKind};

/// The connection info of a request authorised by [`RequireIdentity`], with the
/// partner in force when the request arrived. Only the layer inserts it.
#[derive(Clone, Debug)]
struct Authorized(ConnectionInfo);

/// The authenticated caller of a request, as authorised against the directory in
/// force when the request arrived. A request that did not pass [`RequireIdentity`]
/// has none.
pub fn caller<T>(request: &Request<T>) -> Result<&ConnectionInfo, Status> {
    request
        .extensions()
        .get::<Authorized>()
        .map(|authorized| &authorized.0)
        .ok_or_else(|| Status::unauthenticated("no authenticated client certificate"))
}

/// Federation calls other than `Hello` are for nodes (and the node's own operator).
pub fn require_node(info: &ConnectionInfo) -> Result<(), Status> {
    match info.partner.kind {
        PartnerKind::Node | PartnerKind::Local => Ok(()),
        PartnerKind::Client => Err(Status::permission_denied(format!(
            "{} is configured as a client, not a peer node",
            info.partner.id
        ))),
    }
}

/// Intel calls are for clients (and the node's own operator).
pub fn require_client(info: &ConnectionInfo) -> Result<(), Status> {
    match info.partner.kind {
        PartnerKind::Client | PartnerKind::Local => Ok(()),
        PartnerKind::Node => Err(Status::permission_denied(format!(
            "{} is configured as a peer node; the Intel service is for clients",
            info.partner.id
        ))),
    }
}

/// Operator calls are for the node's own certificate and `admin` clients.
pub fn require_admin(info: &ConnectionInfo) -> Result<(), Status> {
    match (info.partner.kind, info.partner.role) {
        (PartnerKind::Local, _) | (PartnerKind::Client, Role::Admin) => Ok(()),
        (_, role) => Err(Status::permission_denied(format!(
            "{} has role {role}; the Admin service is for the node's operator and admin clients",
            info.partner.id
        ))),
    }
}

/// Writes are for analysts and admins only.
pub fn require_writer(info: &ConnectionInfo) -> Result<(), Status> {
    require_client(info)?;
    match info.partner.role {
        Role::Analyst | Role::Admin => Ok(()),
        role => Err(Status::permission_denied(format!(
            "{} has role {role}, which may not write",
            info.partner.id
        ))),
    }
}

/// Tower layer that authorises every request against `directory` as it is now:
/// refused without an authenticated identity, refused when the connection lost
/// access, otherwise passed on with the partner configured now.
#[derive(Clone, Debug)]
pub struct RequireIdentityLayer {
    directory: Arc<Directory>,
}

impl RequireIdentityLayer {
    /// The layer over the node's directory.
    pub fn new(directory: Arc<Directory>) -> Self {
        Self { directory }
    }
}

impl<S> tower::Layer<S> for RequireIdentityLayer {
    type Service = RequireIdentity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireIdentity {
            inner,
            directory: self.directory.clone(),
        }
    }
}

/// See [`RequireIdentityLayer`].
#[derive(Clone, Debug)]
pub struct RequireIdentity<S> {
    inner: S,
    directory: Arc<Directory>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An answer's hold on its partner's `limits.unsent_answer_bytes`. A handler puts it
/// in its response's extensions; the layer moves it into the response body, so the
/// bytes stay counted until the answer has been sent (or the call dropped).
#[derive(Clone)]
pub(crate) struct HeldAnswer {
    _hold: Arc<AnswerHold>,
}

impl HeldAnswer {
    /// `response` carrying `hold` to the layer.
    pub(crate) fn attach<T>(
        hold: AnswerHold,
        mut response: tonic::Response<T>,
    ) -> tonic::Response<T> {
        response.extensions_mut().insert(HeldAnswer {
            _hold: Arc::new(hold),
        });
        response
    }
}

/// A response body that keeps its call marked in progress on the connection, and its
/// answer's bytes counted, until the body has ended or is dropped.
///
/// The answer is handed to the connection [`ANSWER_CHUNK`] bytes at a time. The
/// HTTP/2 server takes the next frame of a body as soon as the stream may send a single
/// byte, and queues the whole frame beyond the peer's flow-control window: a unary
/// answer (one frame of up to `limits.query_page_bytes`) would leave the body, and with
/// it the answer's hold on `limits.unsent_answer_bytes`, while all of it still waited
/// for a reader that never reads. In chunks, what has not gone out stays here, counted.
struct DuringCall<B> {
    body: B,
    /// The rest of a data frame larger than a chunk.
    rest: bytes::Bytes,
    _call: CallInProgress,
    _held: Option<HeldAnswer>,
}

/// Most bytes of an answer handed to the connection at once.
const ANSWER_CHUNK: usize = 16 * 1024;

impl<B> http_body::Body for DuringCall<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if !self.rest.is_empty() {
            let take = self.rest.len().min(ANSWER_CHUNK);
            let chunk = self.rest.split_to(take);
            return Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) if data.len() > ANSWER_CHUNK => {
                    let chunk = data.split_to(ANSWER_CHUNK);
                    self.rest = data;
                    Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
                }
                Ok(data) => Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.body.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

impl<S, B> tower::Service<http::Request<B>> for RequireIdentity<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(mut info) = request.extensions().get::<ConnectionInfo>().cloned() else {
            let response =
                Status::unauthenticated("no authenticated client certificate").into_http();
            return Box::pin(async move { Ok(response) });
        };
        match self.directory.authorize(&info) {
            Ok(partner) => {
                let call = info.call_begun();
                info.partner = partner;
                request.extensions_mut().insert(Authorized(info));
                let response = self.inner.call(request);
                Box::pin(async move {
                    // Dropped with the future if the call is abandoned before it answers.
                    let mut response = response.await?;
                    let held = response.extensions_mut().remove::<HeldAnswer>();
                    Ok(response.map(|body| {
                        tonic::body::Body::new(DuringCall {
                            body,
                            rest: bytes::Bytes::new(),
                            _call: call,
                            _held: held,
                        })
                    }))
                })
            }
            Err(withdrawal) => {
                let response = Status::from(withdrawal).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
