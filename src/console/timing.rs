//! A tower layer that records how long each gRPC call takes to answer (to its
//! response headers: the whole call for a unary method, the first message for a
//! stream) in `telemetry`, by method. A path no service answers (`UNIMPLEMENTED`) is
//! counted as `unknown`, so a caller cannot add series by inventing paths.

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

/// The `grpc-status` of a call whose method is not served.
const UNIMPLEMENTED: &[u8] = b"12";

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
        let method = request.uri().path().to_owned();
        let start = Instant::now();
        Box::pin(async move {
            let answer = inner.call(request).await;
            let seconds = start.elapsed().as_secs_f64();
            let served = match &answer {
                Ok(response) => {
                    response.headers().get("grpc-status").map(|v| v.as_bytes())
                        != Some(UNIMPLEMENTED)
                }
                Err(_) => false,
            };
            let method = if served { method.as_str() } else { "unknown" };
            crate::telemetry::telemetry().rpc_answered(method, seconds);
            answer
        })
    }
}
