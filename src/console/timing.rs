//! A tower layer that records how long each gRPC call takes to answer (to its
//! response headers: the whole call for a unary method, the first message for a
//! stream) in `telemetry`, by method. Only the methods this node serves
//! ([`METHODS`]) are label values; any other path is counted as `unknown`, so a caller
//! cannot add series by inventing paths.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// Wraps a service with [`RecordLatency`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordLatencyLayer;

impl<S> tower::Layer<S> for RecordLatencyLayer {
    type Service = RecordLatency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordLatency { inner }
    }
}

/// Records each call's time to answer, by method.
#[derive(Clone, Debug)]
pub struct RecordLatency<S> {
    inner: S,
}

/// Every gRPC method the node serves, by path (`tests` checks the list against
/// `proto/`).
pub const METHODS: &[&str] = &[
    "/entente.v1.Admin/ReloadPolicy",
    "/entente.v1.Admin/Explain",
    "/entente.v1.Admin/LedgerShow",
    "/entente.v1.Admin/LedgerVerify",
    "/entente.v1.Admin/Links",
    "/entente.v1.Admin/Limits",
    "/entente.v1.Admin/Feeds",
    "/entente.v1.Admin/Certificates",
    "/entente.v1.Admin/ApplyCrl",
    "/entente.v1.Admin/StoreState",
    "/entente.v1.Federation/Hello",
    "/entente.v1.Federation/Pull",
    "/entente.v1.Federation/GetCertificates",
    "/entente.v1.Federation/OfferCrl",
    "/entente.v1.Intel/Publish",
    "/entente.v1.Intel/Query",
    "/entente.v1.Intel/Get",
    "/entente.v1.Intel/Subscribe",
    "/entente.v1.Intel/Export",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The label a call of `path` is counted under: the path itself if the node serves it.
fn method_label(path: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == path)
        .copied()
        .unwrap_or("unknown")
}

impl<S, B, R> tower::Service<http::Request<B>> for RecordLatency<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone is the ready one's stand-in; the ready service serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = method_label(request.uri().path());
        let start = Instant::now();
        Box::pin(async move {
            let answer = inner.call(request).await;
            crate::telemetry::telemetry().rpc_answered(method, start.elapsed().as_secs_f64());
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{METHODS, method_label};

    #[test]
    fn every_method_of_the_wire_contract_is_listed() {
        let mut declared = Vec::new();
        for file in ["admin", "federation", "intel"] {
            let path = format!(
                "{}/proto/entente/v1/{file}.proto",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = std::fs::read_to_string(path).unwrap();
            let mut service = "";
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("service ") {
                    service = rest.split_whitespace().next().unwrap();
                }
                if let Some(rest) = line.strip_prefix("rpc ") {
                    let method = rest.split('(').next().unwrap().trim();
                    declared.push(format!("/entente.v1.{service}/{method}"));
                }
            }
        }
        let listed: Vec<&str> = METHODS
            .iter()
            .copied()
            .filter(|m| m.starts_with("/entente.v1."))
            .collect();
        declared.sort();
        let mut sorted = listed.clone();
        sorted.sort();
        assert_eq!(declared, sorted);
        assert_eq!(
            method_label("/entente.v1.Intel/Query"),
            "/entente.v1.Intel/Query"
        );
        assert_eq!(method_label("/entente.v1.Intel/Invented"), "unknown");
        assert_eq!(method_label("/x"), "unknown");
    }
}
