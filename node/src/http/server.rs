//! The connection loop shared by every TCP listener: accepts under a connection
//! limit, serves HTTP/1.1 and HTTP/2 (h2c prior knowledge) through hyper, and on
//! shutdown stops accepting and lets in-flight requests finish within a grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::Body;
use crate::metrics::{Api, Metrics};

/// Limits every connection of a listener gets.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Time to receive a request's headers.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), bytes.
    pub max_head_bytes: usize,
    /// How long in-flight requests may run after shutdown begins.
    pub shutdown_grace: Duration,
}

/// Serves `listener` with `handler` until `shutdown` resolves, then drains. Every
/// request's status and latency are recorded under `api`.
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: ServeLimits,
    (metrics, api): (Arc<Metrics>, Api),
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let local = listener.local_addr().ok();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_head_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
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
        let handler = handler.clone();
        let metrics = metrics.clone();
        let service = service_fn(move |req| {
            let started = Instant::now();
            let response = handler(req, peer);
            let metrics = metrics.clone();
            async move {
                let response = response.await;
                metrics.observe(api, started, response.status());
                Ok::<_, Infallible>(response)
            }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(?local, "stopped accepting; draining in-flight requests");
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?local, grace = ?limits.shutdown_grace, "connections still open after the shutdown grace period; closing them");
    }
}
