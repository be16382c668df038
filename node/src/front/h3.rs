//! The HTTP/3 front end: a QUIC endpoint (quinn) serving HTTP/3 (h3) through the same
//! request handler as the TCP listeners, so the KV API, pull-through caching, PURGE
//! and `Cache-Status` behave alike on every protocol.
//!
//! Limits: concurrent bidirectional streams per connection (QUIC flow control), an
//! idle timeout, and a cap on each request's header section (QPACK). On shutdown
//! every connection gets a GOAWAY and in-flight requests finish within the grace
//! period.
//!
//! 0-RTT (`h3_early_data`, off by default): a resuming client may send requests
//! before the handshake completes, and an attacker can replay those. A replayed
//! connection never completes its handshake (the attacker lacks the keys), so the
//! guard is per connection ([`Handshake`]): before completion, safe methods are served
//! and carry `Early-Data: 1` to origins (RFC 8470); anything else waits for the
//! handshake, which a replay never finishes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use bytes::{Buf, Bytes};
use http::{header, Request, Response};
use http_body_util::BodyExt;
use tokio::sync::watch;

use super::scope::RequestScope;
use crate::config::RetryPolicy;
use crate::http::{Answer, BoxError, ReqBody};
use crate::metrics::{Api, Metrics};

/// Limits of the HTTP/3 listener.
#[derive(Debug, Clone)]
pub struct H3Limits {
    /// Concurrent requests (bidirectional streams) per connection.
    pub max_streams: u32,
    /// Idle time after which a connection is closed.
    pub idle_timeout: Duration,
    /// Largest request header section, bytes.
    pub max_header_size: u64,
    /// How long in-flight requests may run after shutdown begins.
    pub shutdown_grace: Duration,
    /// When to validate client addresses with a Retry.
    pub retry: RetryPolicy,
    /// Receive window per stream, bytes.
    pub stream_window: u64,
    /// Receive window per connection, bytes.
    pub connection_window: u64,
    /// Accept 0-RTT early data (safe methods only).
    pub early_data: bool,
    /// Upper bound of path-MTU discovery (UDP payload bytes).
    pub max_udp_payload: u16,
    /// Write a JSON access log line per request to standard output.
    pub access_log: bool,
}

/// How long a client has to complete the QUIC handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes under way above which `RetryPolicy::UnderLoad` starts sending Retries.
const HANDSHAKES_BEFORE_RETRY: usize = 64;

/// Opens the QUIC endpoint on `addr` with `tls` (TLS 1.3, ALPN h3).
pub fn endpoint(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    limits: &H3Limits,
) -> Result<quinn::Endpoint, String> {
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(limits.max_streams.into());
    // Both windows are validated to fit a QUIC varint (at most 1 GiB).
    transport.stream_receive_window(
        quinn::VarInt::from_u64(limits.stream_window).map_err(|e| e.to_string())?,
    );
    transport.receive_window(
        quinn::VarInt::from_u64(limits.connection_window).map_err(|e| e.to_string())?,
    );
    let idle = quinn::IdleTimeout::try_from(limits.idle_timeout).map_err(|e| e.to_string())?;
    transport.max_idle_timeout(Some(idle));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(limits.max_udp_payload);
    transport.mtu_discovery_config(Some(mtu));
    server.transport_config(Arc::new(transport));
    quinn::Endpoint::server(server, addr).map_err(|e| e.to_string())
}

/// Headers HTTP/3 forbids (RFC 9114 §4.2): connection-specific fields.
const CONNECTION_SPECIFIC: &[header::HeaderName] = &[
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Serves `endpoint` with `handler` until `shutdown` resolves, then sends GOAWAY to
/// every connection and drains them within the grace period.
pub async fn serve_h3<H>(
    endpoint: quinn::Endpoint,
    limits: H3Limits,
    (metrics, api): (Arc<Metrics>, Api),
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<ReqBody>, SocketAddr) -> Answer + Clone + Send + Sync + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let handshakes = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
            () = &mut shutdown => break,
        };
        let peer = incoming.remote_address();
        let validate = match limits.retry {
            RetryPolicy::Always => true,
            RetryPolicy::Off => false,
            RetryPolicy::UnderLoad => handshakes.load(Ordering::Relaxed) > HANDSHAKES_BEFORE_RETRY,
        };
        if validate && !incoming.remote_address_validated() && incoming.may_retry() {
            // The client comes back with a token proving its address.
            if let Err(e) = incoming.retry() {
                tracing::debug!(%peer, error = %e, "QUIC retry failed");
            }
            continue;
        }
        let (handler, metrics, limits, stop) = (
            handler.clone(),
            metrics.clone(),
            limits.clone(),
            stop_rx.clone(),
        );
        connections.spawn(async move {
            let Some((connection, handshake)) = establish(incoming, peer, limits.early_data).await
            else {
                return;
            };
            let served = serve_connection(
                connection,
                peer,
                &limits,
                (metrics, api),
                handler,
                (stop, handshake),
            );
            served.await;
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "HTTP/3 connections still open after the shutdown grace period; closing them"
        );
        connections.abort_all();
    }
    endpoint.close(0u32.into(), b"shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// Completes (or, with 0-RTT, starts) the handshake of `incoming`. With early data the
/// connection is handed over at once and [`Handshake`] tells when it completes; a
/// handshake that does not complete in time closes the connection either way.
async fn establish(
    incoming: quinn::Incoming,
    peer: SocketAddr,
    early_data: bool,
) -> Option<(quinn::Connection, Handshake)> {
    let failed = |e: &dyn std::fmt::Display| {
        tracing::debug!(%peer, error = %e, "QUIC handshake failed");
    };
    let connecting = incoming.accept().map_err(|e| failed(&e)).ok()?;
    if early_data {
        // A server-side `into_0rtt` always succeeds.
        let (connection, completed) = connecting.into_0rtt().ok()?;
        let (done_tx, done_rx) = watch::channel(false);
        let watched = connection.clone();
        tokio::spawn(async move {
            // `completed` resolves when the handshake completes (to whether 0-RTT was
            // used, which does not matter here) or when the connection closes first.
            // Dropping `done_tx` tells waiting requests the handshake failed.
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, completed).await {
                Ok(_) if watched.close_reason().is_none() => {
                    let _ = done_tx.send(true);
                }
                Ok(_) => {}
                Err(_) => watched.close(0u32.into(), b"handshake incomplete"),
            }
        });
        return Some((connection, Handshake(done_rx)));
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(c)) => Some((c, Handshake::completed())),
        Ok(Err(e)) => {
            failed(&e);
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "QUIC handshake timed out");
            None
        }
    }
}

/// Whether a connection's TLS handshake has completed: until it has, requests may be
/// 0-RTT early data, which an attacker can replay. Completion is learned a moment
/// after quinn sees it, so a request that arrives just after may still be treated
/// as early: the safe direction (it is only marked, or held a moment longer).
#[derive(Clone)]
pub(crate) struct Handshake(watch::Receiver<bool>);

impl Handshake {
    /// A connection whose handshake completed before any request was read.
    pub(crate) fn completed() -> Self {
        Self(watch::channel(true).1)
    }

    fn is_complete(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits for completion; `false` if the handshake failed instead.
    async fn complete(&mut self) -> bool {
        self.0.wait_for(|done| *done).await.is_ok()
    }

    /// Applies the 0-RTT rules to a request: `Some` when it may be served now (a safe
    /// method, marked `Early-Data: 1` if it arrived early, or any method once the
    /// handshake has completed), `None` when the handshake failed while an unsafe
    /// request waited for it.
    pub(crate) async fn admit<B>(
        &mut self,
        mut request: Request<B>,
        metrics: &Metrics,
    ) -> Option<Request<B>> {
        if self.is_complete() {
            return Some(request);
        }
        if is_safe(request.method()) {
            request
                .headers_mut()
                .insert("early-data", http::HeaderValue::from_static("1"));
            metrics.h3_early_served.inc();
            return Some(request);
        }
        metrics.h3_early_deferred.inc();
        self.complete().await.then_some(request)
    }
}

/// Methods that change nothing (RFC 9110 §9.2.1), which early data may carry.
fn is_safe(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

async fn serve_connection<H>(
    connection: quinn::Connection,
    peer: SocketAddr,
    limits: &H3Limits,
    (metrics, api): (Arc<Metrics>, Api),
    handler: H,
    (mut stop, handshake): (watch::Receiver<bool>, Handshake),
) where
    H: Fn(Request<ReqBody>, SocketAddr) -> Answer + Clone + Send + Sync + 'static,
{
    let built = h3::server::builder()
        .max_field_section_size(limits.max_header_size)
        .build::<_, Bytes>(h3_quinn::Connection::new(connection))
        .await;
    let mut h3 = match built {
        Ok(h3) => h3,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP/3 connection setup failed");
            return;
        }
    };
    let mut requests = tokio::task::JoinSet::new();
    let mut going_away = false;
    loop {
        let accepted = tokio::select! {
            accepted = h3.accept() => accepted,
            _ = stop.changed(), if !going_away => {
                going_away = true;
                // GOAWAY: no new requests; the ones accepted so far finish.
                if let Err(e) = h3.shutdown(0).await {
                    tracing::debug!(%peer, error = %e, "sending GOAWAY failed");
                }
                continue;
            }
            // Once going away with nothing in flight, close rather than wait for a
            // client that may never close (one that died keeps it open until idle).
            _ = requests.join_next(), if going_away => {
                if requests.is_empty() {
                    break;
                }
                continue;
            }
        };
        match accepted {
            Ok(Some(resolver)) => {
                let (handler, metrics, handshake) =
                    (handler.clone(), metrics.clone(), handshake.clone());
                let access_log = limits.access_log;
                requests.spawn(async move {
                    let (request, stream) = match resolver.resolve_request().await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "bad HTTP/3 request");
                            return;
                        }
                    };
                    let listener = (metrics, api, access_log);
                    serve_request(request, stream, peer, listener, handler, handshake).await;
                });
                while requests.try_join_next().is_some() {}
            }
            Ok(None) => break,
            Err(e) => {
                if !e.is_h3_no_error() {
                    tracing::debug!(%peer, error = %e, "HTTP/3 connection ended with an error");
                }
                break;
            }
        }
    }
    while requests.join_next().await.is_some() {}
}

type BidiStream = h3_quinn::BidiStream<Bytes>;

async fn serve_request<H>(
    request: Request<()>,
    stream: h3::server::RequestStream<BidiStream, Bytes>,
    peer: SocketAddr,
    (metrics, api, access_log): (Arc<Metrics>, Api, bool),
    handler: H,
    mut handshake: Handshake,
) where
    H: Fn(Request<ReqBody>, SocketAddr) -> Answer,
{
    let _open = OpenStream::new(&metrics);
    let Some(request) = handshake.admit(request, &metrics).await else {
        return;
    };
    let (mut send, recv) = stream.split();
    let mut request = request.map(|()| recv_body(recv));
    let mut scope = RequestScope::begin(&mut request, peer, (metrics, api), access_log);
    let mut response = match handler(request, peer) {
        Answer::Now(response) => response,
        Answer::Later(work) => work.instrument(scope.span()).await,
    };
    scope.finish(&mut response);
    let (mut parts, mut body) = response.into_parts();
    for name in CONNECTION_SPECIFIC {
        parts.headers.remove(name);
    }
    if let Err(e) = send.send_response(Response::from_parts(parts, ())).await {
        tracing::debug!(%peer, error = %e, "sending an HTTP/3 response head failed");
        return;
    }
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    if let Err(e) = send.send_data(data).await {
                        tracing::debug!(%peer, error = %e, "client went away mid-response");
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "response body failed; resetting the stream");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        }
    }
    if let Err(e) = send.finish().await {
        tracing::debug!(%peer, error = %e, "finishing an HTTP/3 response failed");
    }
}

/// Counts a request stream in `fanz_h3_open_streams` for as long as it lives,
/// however its task ends.
struct OpenStream(prometheus_client::metrics::gauge::Gauge);

impl OpenStream {
    fn new(metrics: &Metrics) -> Self {
        metrics.h3_open_streams.inc();
        Self(metrics.h3_open_streams.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A request body read from an HTTP/3 stream.
fn recv_body(stream: h3::server::RequestStream<h3_quinn::RecvStream, Bytes>) -> ReqBody {
    struct RecvBody(h3::server::RequestStream<h3_quinn::RecvStream, Bytes>);
    impl hyper::body::Body for RecvBody {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
            self.0.poll_recv_data(cx).map(|r| match r {
                Ok(Some(mut buf)) => Some(Ok(hyper::body::Frame::data(
                    buf.copy_to_bytes(buf.remaining()),
                ))),
                Ok(None) => None,
                Err(e) => Some(Err(Box::new(e) as BoxError)),
            })
        }
    }
    RecvBody(stream).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn early(method: Method) -> Request<()> {
        Request::builder()
            .method(method)
            .uri("/kv/x")
            .body(())
            .unwrap()
    }

    fn metrics() -> Metrics {
        Metrics::new(Default::default())
    }

    #[tokio::test]
    async fn before_the_handshake_safe_methods_pass_marked_early() {
        let (_done, rx) = watch::channel(false);
        let metrics = metrics();
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            let admitted = Handshake(rx.clone())
                .admit(early(method.clone()), &metrics)
                .await
                .expect("a safe method is served from early data");
            assert_eq!(admitted.headers()["early-data"], "1", "{method}");
        }
        assert_eq!(metrics.h3_early_served.get(), 3);
        assert_eq!(metrics.h3_early_deferred.get(), 0);
    }

    #[tokio::test]
    async fn before_the_handshake_unsafe_methods_wait_for_it() {
        let metrics = Arc::new(metrics());
        for method in [
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::from_bytes(b"PURGE").unwrap(),
        ] {
            let (done, rx) = watch::channel(false);
            let waiting = tokio::spawn({
                let metrics = metrics.clone();
                async move { Handshake(rx).admit(early(method), &metrics).await }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(
                !waiting.is_finished(),
                "served before the handshake completed"
            );
            done.send(true).unwrap();
            let admitted = waiting.await.unwrap().expect("served once complete");
            assert!(
                admitted.headers().get("early-data").is_none(),
                "not early once the handshake is done"
            );
        }
        assert_eq!(metrics.h3_early_deferred.get(), 4);
        assert_eq!(metrics.h3_early_served.get(), 0);
    }

    #[tokio::test]
    async fn an_unsafe_request_is_dropped_when_the_handshake_fails() {
        let (done, rx) = watch::channel(false);
        let metrics = metrics();
        drop(done); // the handshake timed out or failed
        assert!(Handshake(rx)
            .admit(early(Method::PUT), &metrics)
            .await
            .is_none());
    }

    #[tokio::test]
    async fn after_the_handshake_nothing_is_marked_or_counted() {
        let metrics = metrics();
        for method in [Method::GET, Method::PUT] {
            let admitted = Handshake::completed()
                .admit(early(method), &metrics)
                .await
                .unwrap();
            assert!(admitted.headers().get("early-data").is_none());
        }
        assert_eq!(
            metrics.h3_early_served.get() + metrics.h3_early_deferred.get(),
            0
        );
    }
}
