//! Who is calling, and may they call this method. Every request carries the
//! [`ConnectionInfo`] the listener resolved from the client certificate; a request
//! without it is refused before reaching any service (health and reflection
//! included).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::{Request, Status};

use crate::model::Role;
use crate::transport::{ConnectionInfo, PartnerKind};

/// The authenticated caller of a request.
pub fn caller<T>(request: &Request<T>) -> Result<&ConnectionInfo, Status> {
    request
        .extensions()
        .get::<ConnectionInfo>()
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

/// Tower layer that refuses any request lacking an authenticated identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequireIdentityLayer;

impl<S> tower::Layer<S> for RequireIdentityLayer {
    type Service = RequireIdentity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireIdentity { inner }
    }
}

/// See [`RequireIdentityLayer`].
#[derive(Clone, Debug)]
pub struct RequireIdentity<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for RequireIdentity<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.extensions().get::<ConnectionInfo>().is_none() {
            let response =
                Status::unauthenticated("no authenticated client certificate").into_http();
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(self.inner.call(request))
    }
}
