//! The accept loop shared by every TCP listener: accepts under a connection limit,
//! optionally terminates TLS (ALPN offers h2 and http/1.1), hands each connection
//! to [`super::conn`] (HTTP/1.1, parked while idle, or HTTP/2), and on shutdown
//! stops accepting and lets in-flight requests finish within a grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::conn::{Io, Protocols};
use super::idle::{Activity, ConnTimeouts, TimedIo, TrackedBody};
use super::scope::RequestScope;
use super::sendfile::SendfileTcp;
use crate::http::{Answer, Body, BoxError, ReqBody};
use crate::metrics::{Api, Metrics};
use crate::store::mapped;

/// Limits every connection of a listener gets.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Time to receive a request's head once it began (and a new connection's
    /// first one); also the TLS handshake's limit.
    pub header_read_timeout: Duration,
    /// Idle time between requests after which a connection is closed.
    pub keepalive_timeout: Duration,
    /// Largest request head (request line and headers), bytes.
    pub max_head_bytes: usize,
    /// How long in-flight requests may run after shutdown begins.
    pub shutdown_grace: Duration,
    /// Terminate TLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Write a JSON access log line per request to standard output.
    pub access_log: bool,
    /// `Alt-Svc` value added to every response (HTTP/3 advertisement).
    pub alt_svc: Option<HeaderValue>,
}

/// What is left to do for a request once its response exists: the shared
/// bookkeeping ([`RequestScope`]), the `Alt-Svc` advertisement, and tracking its
/// body for the idle timer.
struct Done {
    scope: RequestScope,
    alt_svc: Option<HeaderValue>,
    activity: Arc<Activity>,
}

impl Done {
    fn finish(self, mut response: Response<Body>) -> Response<TrackedBody<Body>> {
        if let Some(v) = self.alt_svc {
            response.headers_mut().insert(header::ALT_SVC, v);
        }
        self.scope.finish(&mut response);
        response.map(|body| self.activity.track(body))
    }
}

/// The future hyper polls for one request: a response finished at once, or the
/// handler's work, polled inside the request's span and finished when done.
struct Served {
    ready: Option<Response<TrackedBody<Body>>>,
    later: Option<Later>,
}

struct Later {
    work: Pin<Box<dyn Future<Output = Response<Body>> + Send>>,
    span: tracing::Span,
    done: Done,
}

impl Future for Served {
    type Output = Result<Response<TrackedBody<Body>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is Unpin (the work is boxed).
        let this = self.get_mut();
        if let Some(response) = this.ready.take() {
            return Poll::Ready(Ok(response));
        }
        let later = this.later.as_mut().expect("polled after completion");
        let response = {
            let _in_span = later.span.enter();
            std::task::ready!(later.work.as_mut().poll(cx))
        };
        let later = this.later.take().expect("polled after completion");
        Poll::Ready(Ok(later.done.finish(response)))
    }
}

/// Serves `listener` with `handler` until `shutdown` resolves, then drains. Every
/// request's status and latency are recorded under `api`.
pub async fn serve<H>(
    listener: TcpListener,
    limits: ServeLimits,
    (metrics, api): (Arc<Metrics>, Api),
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<ReqBody>, SocketAddr) -> Answer + Clone + Send + Sync + Unpin + 'static,
{
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // TimedIo keeps the header and idle timers apart; hyper's runs both as one.
        .header_read_timeout(None)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .keep_alive(true);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_head_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let protocols = Arc::new(Protocols { http1, http2 });
    let accepting = Accepting {
        max_connections: limits.max_connections,
        shutdown_grace: limits.shutdown_grace,
    };
    accept_loop(
        listener,
        accepting,
        shutdown,
        move |stream, peer, stop_watch| {
            let handler = handler.clone();
            let conn_metrics = metrics.clone();
            let metrics = metrics.clone();
            let access_log = limits.access_log;
            let alt_svc = limits.alt_svc.clone();
            let activity = Arc::new(Activity::default());
            let conn_activity = activity.clone();
            let service = service_fn(move |mut req: Request<Incoming>| {
                let scope = RequestScope::begin(&mut req, peer, (metrics.clone(), api), access_log);
                activity.request_started(req.version());
                let answer = handler(
                    req.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()),
                    peer,
                );
                let mut done = Done {
                    scope,
                    alt_svc: alt_svc.clone(),
                    activity: activity.clone(),
                };
                match answer {
                    Answer::Now(response) => Served {
                        ready: Some(done.finish(response)),
                        later: None,
                    },
                    Answer::Later(work) => Served {
                        ready: None,
                        later: Some(Later {
                            span: done.scope.span(),
                            work,
                            done,
                        }),
                    },
                }
            });
            let protocols = protocols.clone();
            let tls = limits.tls.clone().map(tokio_rustls::TlsAcceptor::from);
            let handshake_timeout = limits.header_read_timeout;
            let timeouts = ConnTimeouts {
                keepalive: limits.keepalive_timeout,
                header: limits.header_read_timeout,
            };
            async move {
                let io: Box<dyn Io> = match tls {
                    // Only when entries are kept in files (`sendfile_min_size`): there is
                    // nothing to look for otherwise.
                    None if mapped::in_use() => Box::new(SendfileTcp::new(
                        stream,
                        conn_metrics.http_body_bytes_sendfile.clone(),
                    )),
                    None => Box::new(stream),
                    Some(acceptor) => {
                        // Boxed: the handshake's state would otherwise stay in every
                        // connection's task for its whole life.
                        let handshake = Box::pin(acceptor.accept(stream));
                        match tokio::time::timeout(handshake_timeout, handshake).await {
                            Ok(Ok(tls_stream)) => Box::new(tls_stream),
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                let io = TimedIo::new(io, conn_activity.clone(), timeouts);
                let served = super::conn::serve(
                    io,
                    conn_activity,
                    service,
                    protocols,
                    conn_metrics,
                    stop_watch,
                );
                if let Err(e) = served.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
        },
    )
    .await;
}

/// How a listener accepts and lets go of its connections.
#[derive(Debug, Clone, Copy)]
pub struct Accepting {
    /// Connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// How long open connections may take to finish once the listener stops.
    pub shutdown_grace: Duration,
}

/// The accept loop every TCP listener shares: accepts on `listener` while fewer
/// than `max_connections` are open (backing off when accepting fails, as on
/// EMFILE), runs each connection as its own task (`connection` gets the stream,
/// the peer and a watch that turns true when the listener stops), and once
/// `shutdown` resolves stops accepting and waits up to `shutdown_grace` for the
/// open connections to close.
pub async fn accept_loop<C, F>(
    listener: TcpListener,
    limits: Accepting,
    shutdown: impl Future<Output = ()>,
    mut connection: C,
) where
    C: FnMut(TcpStream, SocketAddr, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr().ok();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Every connection watches this; it changes once, when the listener stops.
    let (stopping, stop_watch) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // the semaphore is never closed
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let served = connection(stream, peer, stop_watch.clone());
        tokio::spawn(async move {
            served.await;
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(?local, "stopped accepting; draining in-flight requests");
    let _ = stopping.send(true);
    // Every connection holds a permit until it is closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(?local, grace = ?limits.shutdown_grace, "connections still open after the shutdown grace period; closing them");
    }
}
