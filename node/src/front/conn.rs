//! One accepted TCP connection (TLS already terminated), served until it closes or
//! the listener shuts down: HTTP/2 when it opens with the prior-knowledge preface
//! (what ALPN `h2` clients send too), HTTP/1.1 otherwise.
//!
//! An HTTP/1.1 connection is *parked* while it is idle between requests (issue 21,
//! part 4): hyper keeps a read and a write buffer (8 KiB each) per connection for
//! as long as it lives, and keep-alive connections mostly wait. After
//! [`PARK_AFTER`] without a request, the hyper connection is closed without closing
//! the socket, which frees its buffers; the socket waits alone, with the keep-alive
//! timer still running ([`TimedIo`]), and the next bytes to arrive start a new
//! hyper connection on it (bytes already read are given back to the stream first:
//! [`TimedIo::give_back`]). A client sees one keep-alive connection throughout.
//! HTTP/2 connections keep their state (streams, HPACK tables) and are not parked.

use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::idle::{Activity, TimedIo, TrackedBody};
use crate::http::Body;
use crate::metrics::Metrics;

/// How long an HTTP/1.1 connection is idle before it is parked: between one and two
/// checks of this period. Long enough that a client sending requests back to back
/// never pays for a new hyper connection; short enough that a mostly idle
/// connection holds its buffers for a small fraction of its life.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// What an HTTP/2 client sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes read from a parked connection at once: enough for most request heads'
/// first segment, and held only while waiting.
const WAKE_READ: usize = 256;

/// A connection's byte stream: plain TCP or TLS over it.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Stream = TimedIo<Box<dyn Io>>;
type HyperIo = TokioIo<Stream>;

/// hyper's two servers, configured once per listener.
pub(super) struct Protocols {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

/// Serves one connection with `service` until it closes, or until `shutdown`
/// changes: then requests in flight finish and the connection closes.
pub(super) async fn serve<S>(
    io: Stream,
    activity: Arc<Activity>,
    service: S,
    protocols: Arc<Protocols>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    S: Service<Request<Incoming>, Response = Response<TrackedBody<Body>>> + Clone + Unpin,
    S::Future: Send + Unpin + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut io = io;
    let h2 = tokio::select! {
        sniffed = Box::pin(sniff(&mut io)) => match sniffed {
            Ok(Some(h2)) => h2,
            Ok(None) | Err(_) => return Ok(()), // closed or timed out before a request
        },
        _ = shutdown.changed() => return Ok(()),
    };
    if h2 {
        // Boxed, like the HTTP/1.1 connection below: the task of every connection is
        // as large as its largest state, and most connections are parked HTTP/1.1.
        let mut conn = Box::pin(protocols.http2.serve_connection(TokioIo::new(io), service));
        return tokio::select! {
            done = conn.as_mut() => done,
            _ = shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
    }
    loop {
        let conn = protocols
            .http1
            .serve_connection(TokioIo::new(io), service.clone());
        let serving = Box::pin(serve_until_idle(conn, &activity, &mut shutdown));
        let Some((next_bytes, stream)) = serving.await? else {
            return Ok(());
        };
        io = stream;
        if !next_bytes {
            metrics.http_connections_parked.inc();
            let woken = park(&mut io, &mut shutdown).await;
            metrics.http_connections_parked.dec();
            if !woken {
                let _ = io.shutdown().await;
                return Ok(());
            }
        }
    }
}

/// Runs one hyper HTTP/1.1 connection until the client is done (`None`, the
/// socket shut down) or it has been idle for [`PARK_AFTER`]: then hyper's state is
/// dropped and the socket comes back, with the bytes hyper read but did not use
/// given back to it (whether there were any: the next request has begun).
async fn serve_until_idle<S>(
    mut conn: http1::Connection<HyperIo, S>,
    activity: &Activity,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<(bool, Stream)>, hyper::Error>
where
    S: Service<Request<Incoming>, Response = Response<TrackedBody<Body>>> + Unpin,
    S::Future: Send + Unpin + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut parking, mut stopping) = (false, false);
    let mut check = pin!(tokio::time::sleep(PARK_AFTER));
    let mut seen = activity.requests();
    loop {
        tokio::select! {
            // In order, the connection first: it is what wakes this task at almost
            // every wake, and the random start costs a draw each time.
            biased;
            done = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                done?;
                let parts = conn.into_parts();
                let mut stream = parts.io.into_inner();
                if parking && !stopping {
                    // Copied: a slice would keep hyper's whole read buffer alive.
                    let next_bytes = !parts.read_buf.is_empty();
                    stream.give_back(Bytes::copy_from_slice(&parts.read_buf));
                    return Ok(Some((next_bytes, stream)));
                }
                // The client closed, hyper closed (`Connection: close`), or the
                // server is stopping: shut the socket down as hyper would have.
                let _ = stream.shutdown().await;
                return Ok(None);
            }
            () = &mut check, if !parking && !stopping => {
                // Idle across a whole check: no request began since the last one.
                let requests = activity.requests();
                if requests == seen && activity.between_requests() {
                    parking = true;
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                } else {
                    seen = requests;
                    check.as_mut().reset(tokio::time::Instant::now() + PARK_AFTER);
                }
            }
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
                std::pin::Pin::new(&mut conn).graceful_shutdown();
            }
        }
    }
}

/// Waits on a parked connection for the client's next bytes (given back to the
/// stream: `true`), or for its end: the client closed, the keep-alive timer ran
/// out, or the server is stopping (`false`).
async fn park(io: &mut Stream, shutdown: &mut watch::Receiver<bool>) -> bool {
    let mut buf = Box::new([0u8; WAKE_READ]);
    tokio::select! {
        read = io.read(&mut buf[..]) => match read {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                io.give_back(Bytes::copy_from_slice(&buf[..n]));
                true
            }
        },
        _ = shutdown.changed() => false,
    }
}

/// Reads the first bytes of a connection, as far as they match the HTTP/2
/// preface, and gives them back: `true` once all of it arrived, `false` at the
/// first byte that differs, `None` if the client closed first.
async fn sniff(io: &mut Stream) -> io::Result<Option<bool>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut got = 0;
    loop {
        let n = io.read(&mut buf[got..]).await?;
        if n == 0 {
            return Ok(None);
        }
        got += n;
        let differs = buf[..got] != H2_PREFACE[..got];
        if differs || got == H2_PREFACE.len() {
            io.give_back(Bytes::copy_from_slice(&buf[..got]));
            return Ok(Some(!differs));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::idle::ConnTimeouts;
    use std::convert::Infallible;

    /// A connection over an in-memory pipe of `capacity` bytes, served by a
    /// service that answers every request with `body`; returns the client's end.
    fn serve_body(capacity: usize, body: Bytes, metrics: Arc<Metrics>) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(capacity);
        let activity = Arc::new(Activity::default());
        let timeouts = ConnTimeouts {
            keepalive: Duration::from_secs(60),
            header: Duration::from_secs(10),
        };
        let io = TimedIo::new(Box::new(server) as Box<dyn Io>, activity.clone(), timeouts);
        let tracker = activity.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            tracker.request_started(req.version());
            let response = Response::new(tracker.track(crate::http::full(body.clone())));
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let mut http1 = http1::Builder::new();
        http1.timer(hyper_util::rt::TokioTimer::new());
        let protocols = Arc::new(Protocols {
            http1,
            http2: http2::Builder::new(TokioExecutor::new()),
        });
        let (_stop, watch) = watch::channel(false);
        tokio::spawn(async move {
            let _stop = _stop;
            serve(io, activity, service, protocols, metrics, watch).await
        });
        client
    }

    /// Reads one response with a Content-Length body from `client`: its body.
    async fn read_body(client: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap();
            if got.len() >= end + 4 + length {
                return got[end + 4..end + 4 + length].to_vec();
            }
        }
    }

    #[tokio::test]
    async fn a_connection_quiet_with_a_response_still_unsent_is_not_parked_until_it_is_sent() {
        let metrics = Arc::new(Metrics::new(Default::default()));
        let body: Bytes = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        const PIPE: usize = 64 << 10;
        let mut client = serve_body(PIPE, body.clone(), metrics.clone());
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Read all but the pipe's worth and a few KiB more, then stop: the body has
        // been handed over and the response counts as done, but its last bytes wait
        // in hyper's buffer, long past the park checks.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        let body_start = loop {
            let n = client.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let stop_at = body_start + body.len() - PIPE - 4096;
        while got.len() < stop_at {
            let want = (stop_at - got.len()).min(buf.len());
            let n = client.read(&mut buf[..want]).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        tokio::time::sleep(PARK_AFTER * 5).await;
        assert_eq!(
            metrics.http_connections_parked.get(),
            0,
            "parked with bytes unsent"
        );
        while got.len() < body_start + body.len() {
            let n = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf))
                .await
                .expect("the rest of the body never came")
                .unwrap();
            assert!(
                n > 0,
                "closed {} bytes short",
                body_start + body.len() - got.len()
            );
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got[body_start..] == body[..], "the body came back damaged");
        // Sent: now it parks, and carries on.
        tokio::time::sleep(PARK_AFTER * 3).await;
        assert_eq!(metrics.http_connections_parked.get(), 1);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_body(&mut client).await == body[..]);
    }
}
