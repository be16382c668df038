//! Talking to origins: which origin serves a Host, the HTTP client (connection pool,
//! timeouts), and the protections around it — a bulkhead (bounded concurrency), a
//! circuit breaker, and retries with exponential backoff and full jitter for
//! idempotent requests that failed before any byte came back.
//!
//! An origin that answers is alive: its 5xx answers are passed on as its answers and
//! do not count against its breaker, unless `breaker_statuses` lists them. What counts
//! is the transport failing: a connection refused or reset, TLS, a connect,
//! first-byte or total timeout, a response cut off. A request that may have reached
//! the origin is never sent twice unless it is idempotent (GET, HEAD, no body).

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::breaker::Breaker;
use crate::config::Rules;
use crate::config::{Config, ForwardHost, OriginUrl};
use crate::http::{full, Body, BoxError};
use crate::metrics::{Metrics, OriginOutcome};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers that change what an origin answers without being part of the
/// cache key: forwarding them would let one client poison the cache for everyone.
const UNKEYED: &[&str] = &[
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-proto",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "forwarded",
];

/// Why a request did not get a response from the origin.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The breaker is open.
    #[error("origin circuit breaker is open")]
    BreakerOpen {
        /// When to try again.
        retry_after: Duration,
    },
    /// The bulkhead is full.
    #[error("too many requests in flight to the origin")]
    Busy,
    /// No connection, or it broke before a response came back.
    #[error("origin unreachable: {0}")]
    Unreachable(String),
    /// No response head within the first-byte timeout.
    #[error("origin did not answer within {0:?}")]
    Timeout(Duration),
}

impl OriginError {
    /// The status a client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            OriginError::BreakerOpen { .. } | OriginError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            OriginError::Unreachable(_) => StatusCode::BAD_GATEWAY,
            OriginError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Seconds for `Retry-After`, when there is a meaningful one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            OriginError::BreakerOpen { retry_after } => Some(retry_after.as_secs().max(1)),
            OriginError::Busy => Some(1),
            _ => None,
        }
    }
}

/// A response head from upstream (the origin, or the owner of the key over the
/// peer protocol), with its body still to read, and the origin bulkhead slot it
/// holds until the body is done.
#[derive(Debug)]
pub struct OriginResponse {
    /// The response.
    pub response: Response<Body>,
    /// Released when dropped (none for a peer fetch: the owner holds its own).
    pub permit: Option<OwnedSemaphorePermit>,
}

/// One origin.
#[derive(Debug)]
pub struct Origin {
    url: OriginUrl,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    bulkhead: Arc<Semaphore>,
    breaker: Arc<Breaker>,
    /// Response statuses that count as failures for the breaker.
    breaker_statuses: Vec<u16>,
    first_byte_timeout: Duration,
    total_timeout: Duration,
    retries: u32,
    metrics: Arc<Metrics>,
}

impl Origin {
    fn new(
        url: OriginUrl,
        config: &Config,
        tls: &Arc<rustls::ClientConfig>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.origin_connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        // http:// origins speak HTTP/1.1; https:// ones negotiate h2 or http/1.1 by ALPN.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(rustls::ClientConfig::clone(tls))
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_only(config.origin_protocol == crate::config::OriginProtocol::H2)
            .build(connector);
        Self {
            url,
            client,
            bulkhead: Arc::new(Semaphore::new(config.origin_max_concurrency)),
            breaker: Arc::new(Breaker::new(config.breaker_failures, config.breaker_open)),
            breaker_statuses: config.breaker_statuses.clone(),
            first_byte_timeout: config.origin_first_byte_timeout,
            total_timeout: config.origin_total_timeout,
            retries: config.origin_retries,
            metrics: metrics.clone(),
        }
    }

    /// The origin's URL.
    pub fn url(&self) -> &OriginUrl {
        &self.url
    }

    /// Whether its breaker is refusing requests.
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Sends a request (counted in the metrics). A GET or HEAD (`body` is `None`)
    /// whose connection failed, or closed before any response byte, is retried;
    /// nothing else is. The response's body ends in an error, counted by the
    /// breaker, if it fails or is not complete within the total timeout.
    pub async fn send(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Option<Body>,
    ) -> Result<OriginResponse, OriginError> {
        let result = self.try_send(method, path_and_query, headers, body).await;
        let (outcome, status) = match &result {
            Ok(r) => (OriginOutcome::Response, Some(r.response.status())),
            Err(OriginError::BreakerOpen { .. }) => (OriginOutcome::BreakerOpen, None),
            Err(OriginError::Busy) => (OriginOutcome::Busy, None),
            Err(OriginError::Unreachable(_)) => (OriginOutcome::Unreachable, None),
            Err(OriginError::Timeout(_)) => (OriginOutcome::Timeout, None),
        };
        self.metrics.origin_request(outcome, status);
        result
    }

    async fn try_send(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Option<Body>,
    ) -> Result<OriginResponse, OriginError> {
        let permit = self
            .bulkhead
            .clone()
            .try_acquire_owned()
            .map_err(|_| OriginError::Busy)?;
        self.breaker
            .allow()
            .map_err(|open| OriginError::BreakerOpen {
                retry_after: open.retry_after,
            })?;
        let uri: Uri = format!("{}{}", self.url, path_and_query)
            .parse()
            .map_err(|e| OriginError::Unreachable(format!("bad request target: {e}")))?;
        let started = tokio::time::Instant::now();
        let idempotent = body.is_none() && (method == Method::GET || method == Method::HEAD);
        let attempts = if idempotent { 1 + self.retries } else { 1 };
        let mut body = body;
        let mut last_error = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let mut request = Request::builder()
                .method(method.clone())
                .uri(uri.clone())
                .body(body.take().unwrap_or_else(|| full(bytes::Bytes::new())))
                .map_err(|e| OriginError::Unreachable(e.to_string()))?;
            *request.headers_mut() = headers.clone();
            match tokio::time::timeout(self.first_byte_timeout, self.client.request(request)).await
            {
                Ok(Ok(response)) => {
                    // A status opted in fails now; otherwise the body decides.
                    let failed = self.breaker_statuses.contains(&response.status().as_u16());
                    if failed {
                        self.breaker.record(false);
                    }
                    let breaker = self.breaker.clone();
                    let deadline = started + self.total_timeout;
                    let response = response.map(|body| {
                        Watched {
                            inner: body.map_err(|e| Box::new(e) as BoxError).boxed(),
                            deadline: Box::pin(tokio::time::sleep_until(deadline)),
                            breaker,
                            ended: false,
                            pending: !failed,
                        }
                        .boxed()
                    });
                    return Ok(OriginResponse {
                        response,
                        permit: Some(permit),
                    });
                }
                Ok(Err(e)) => {
                    last_error = e.to_string();
                    // Safe to send again: it never reached the origin, or it is
                    // idempotent and no response byte came back.
                    if !(idempotent && (e.is_connect() || closed_before_response(&e))) {
                        break;
                    }
                }
                Err(_) => {
                    self.breaker.record(false);
                    return Err(OriginError::Timeout(self.first_byte_timeout));
                }
            }
        }
        self.breaker.record(false);
        Err(OriginError::Unreachable(last_error))
    }
}

/// Whether the connection closed before any response came back (typically a pooled
/// keep-alive connection the origin had just closed).
fn closed_before_response(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(h) = cause.downcast_ref::<hyper::Error>() {
            return h.is_incomplete_message() || h.is_canceled();
        }
        source = cause.source();
    }
    false
}

/// An origin response body that reports the request's outcome to the breaker, once:
/// a body cut off (an error from the connection) or not complete by the total
/// timeout is a transport failure, and ends in an error; a body read to its end, or
/// dropped before (the client went away), is a success.
struct Watched {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    breaker: Arc<Breaker>,
    ended: bool,
    /// The outcome is still to be reported.
    pending: bool,
}

impl Watched {
    fn report(&mut self, success: bool) {
        if std::mem::take(&mut self.pending) {
            self.breaker.record(success);
        }
    }

    fn fail(&mut self, error: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ended = true;
        self.report(false);
        Poll::Ready(Some(Err(error)))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.report(true);
    }
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => this.fail(e),
            Poll::Ready(None) => {
                this.ended = true;
                this.report(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => this.fail("origin response not complete in time".into()),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Exponential backoff with full jitter: uniform in [0, 50 ms × 2^attempt).
fn backoff(attempt: u32) -> Duration {
    let cap_ms = 50u64 << attempt.min(6);
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_millis(random % cap_ms)
}

/// Which origin serves which Host.
#[derive(Debug)]
pub struct Origins {
    default: Option<Arc<Origin>>,
    routes: HashMap<String, Arc<Origin>>,
    forward_host: ForwardHost,
    forward_headers: Vec<String>,
    /// The operator's `[[rules]]`, replaced with the origins on a reload.
    rules: Rules,
    /// The origins rules name, by rule index.
    rule_origins: HashMap<usize, Arc<Origin>>,
}

impl Origins {
    /// Builds the origins of `config`; `tls` is the client configuration for https ones.
    pub fn from_config(
        config: &Config,
        tls: &Arc<rustls::ClientConfig>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        Self {
            default: config
                .origin
                .clone()
                .map(|u| Arc::new(Origin::new(u, config, tls, metrics))),
            routes: config
                .origin_routes
                .iter()
                .map(|(host, url)| {
                    (
                        host.clone(),
                        Arc::new(Origin::new(url.clone(), config, tls, metrics)),
                    )
                })
                .collect(),
            forward_host: config.forward_host,
            forward_headers: config.forward_headers.clone(),
            rules: config.rules.clone(),
            rule_origins: config
                .rules
                .iter()
                .filter_map(|rule| {
                    let url = rule.origin.clone()?;
                    Some((rule.index, Arc::new(Origin::new(url, config, tls, metrics))))
                })
                .collect(),
        }
    }

    /// The origin rule number `index` names, if it names one.
    pub fn for_rule(&self, index: usize) -> Option<&Arc<Origin>> {
        self.rule_origins.get(&index)
    }

    /// The operator's rules.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// How many origins have their breaker open.
    pub fn breakers_open(&self) -> usize {
        self.default
            .iter()
            .chain(self.routes.values())
            .chain(self.rule_origins.values())
            .filter(|o| o.breaker_open())
            .count()
    }

    /// Whether any origin is configured.
    pub fn any(&self) -> bool {
        self.default.is_some() || !self.routes.is_empty() || !self.rule_origins.is_empty()
    }

    /// The origin for `host` (lower-case, without port): a route, else the default.
    pub fn for_host(&self, host: &str) -> Option<&Arc<Origin>> {
        self.routes.get(host).or(self.default.as_ref())
    }

    /// The headers to send to `origin` for a client request with `headers`.
    pub fn forward_headers(
        &self,
        origin: &Origin,
        headers: &HeaderMap,
        client: std::net::IpAddr,
    ) -> HeaderMap {
        let mut out = headers.clone();
        strip_hop_by_hop(&mut out);
        // The coding the variant key uses (see `key::accept_encoding`).
        if let Some(coding) = super::key::accept_encoding(&out) {
            out.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(coding));
        }
        for name in UNKEYED {
            if !self.forward_headers.iter().any(|f| f == name) {
                out.remove(*name);
            }
        }
        if self.forward_host == ForwardHost::Origin {
            if let Ok(v) = HeaderValue::from_str(&origin.url.authority) {
                out.insert(header::HOST, v);
            }
        }
        let forwarded_for = match out.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {client}"),
            None => client.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
            out.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        out.append(header::VIA, HeaderValue::from_static("1.1 fanz"));
        out
    }
}

/// Removes hop-by-hop headers, including those the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(listed.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_unkeyed_headers_are_not_forwarded() {
        let mut config = Config::defaults();
        config.origin = Some(OriginUrl::parse("http://127.0.0.1:1").unwrap());
        config.forward_headers = vec!["x-original-url".into()];
        let origins = Origins::from_config(
            &config,
            &crate::tls::origin_client_config(None).unwrap(),
            &Arc::new(Metrics::new(Default::default())),
        );
        let origin = origins.for_host("anything").unwrap().clone();
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("x-forwarded-host", "evil.example"),
            ("x-original-url", "/allowed"),
            ("accept", "text/html"),
            ("host", "site.example"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = origins.forward_headers(&origin, &h, "192.0.2.7".parse().unwrap());
        for gone in ["connection", "x-secret", "keep-alive", "x-forwarded-host"] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(out["x-original-url"], "/allowed");
        assert_eq!(out["accept"], "text/html");
        assert_eq!(out["host"], "site.example");
        assert_eq!(out["x-forwarded-for"], "192.0.2.7");
        assert_eq!(out["via"], "1.1 fanz");
    }

    #[test]
    fn backoff_stays_under_its_cap() {
        for attempt in 1..10 {
            assert!(backoff(attempt) < Duration::from_millis(50 << attempt.min(6)));
        }
    }
}
