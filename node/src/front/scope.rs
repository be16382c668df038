//! What every front end does around one request, whatever the protocol: open its
//! trace (request id, `traceparent`, the span), and once the response exists, tag it
//! with the request id, count it in the metrics and write its access-log line.
//! HTTP/1.1 and HTTP/2 (`server`) and HTTP/3 (`h3`) share it, so they cannot drift.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// `cache-status`.
const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

use http::{Request, Response};

use super::trace::{self, RequestTrace};
use crate::http::cache_status::Outcome;
use crate::http::Body;
use crate::metrics::{Api, Metrics};

/// One request's bookkeeping, from its head to its response.
pub struct RequestScope {
    started: Instant,
    /// Kept only when the access log is on.
    request_line: Option<(http::Method, http::Uri, http::Version)>,
    metrics: Arc<Metrics>,
    api: Api,
    peer: SocketAddr,
    trace: RequestTrace,
}

impl RequestScope {
    /// Opens the scope of `request` from `peer` on listener `api`; `access_log`
    /// keeps what its log line needs.
    pub fn begin<B>(
        request: &mut Request<B>,
        peer: SocketAddr,
        (metrics, api): (Arc<Metrics>, Api),
        access_log: bool,
    ) -> Self {
        let started = Instant::now();
        let trace = trace::begin(request, api.as_str());
        let request_line = access_log.then(|| {
            (
                request.method().clone(),
                request.uri().clone(),
                request.version(),
            )
        });
        Self {
            started,
            request_line,
            metrics,
            api,
            peer,
            trace,
        }
    }

    /// The request's span (opened on first use: a hit answered at once has none).
    pub fn span(&mut self) -> tracing::Span {
        self.trace.span()
    }

    /// The response exists: tag it, count it, log it.
    pub fn finish(self, response: &mut Response<Body>) {
        trace::finish(response, &self.trace);
        let cache = Outcome::of(response.headers().get(CACHE_STATUS));
        self.metrics
            .observe(self.api, self.started, response.status(), cache);
        if let Some(request_line) = &self.request_line {
            log_access(
                self.api,
                self.peer,
                request_line,
                response,
                cache,
                self.started,
                &self.trace,
            );
        }
    }
}

/// One JSON line per request on standard output.
fn log_access(
    api: Api,
    peer: SocketAddr,
    (method, uri, version): &(http::Method, http::Uri, http::Version),
    response: &Response<Body>,
    cache: Outcome,
    started: Instant,
    trace: &RequestTrace,
) {
    use std::io::Write;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let line = serde_json::json!({
        "listener": api.as_str(),
        "ts_ms": crate::clock::now_ms(),
        "peer": peer.to_string(),
        "method": method.as_str(),
        "uri": uri.to_string(),
        "version": format!("{version:?}"),
        "status": response.status().as_u16(),
        "duration_us": started.elapsed().as_micros() as u64,
        "bytes": header("content-length").and_then(|v| v.parse::<u64>().ok()),
        "cache_status": header("cache-status"),
        "cache": cache.as_str(),
        "request_id": trace.request_id.to_str().unwrap_or_default(),
        "trace_id": format!("{:032x}", trace.context.trace_id),
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}
