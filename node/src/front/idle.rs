//! Connection timers for HTTP/1.1 and HTTP/2 over TCP: how long a connection may
//! sit idle between requests (`keepalive_timeout`), and how long a client has to
//! send a request head once it has started one, or its first one after connecting
//! (`header_read_timeout`, the slowloris guard).
//!
//! hyper has one timer for both: its header read timeout starts when it begins
//! waiting for the next request, so an idle keep-alive connection can last no
//! longer than the slowloris guard (10 s), far shorter than clients expect (nginx
//! keeps idle connections 75 s). Here the two are separate: [`TimedIo`] wraps the
//! connection's byte stream and sees its reads; the service tells it, through
//! [`Activity`], when a request begins and when its response has been sent.
//!
//! HTTP/1.1: idle until a byte arrives, then the head has `header_read_timeout`;
//! busy while a response is in flight (origin timeouts apply, not these); idle again
//! once every response body has been sent. HTTP/2: reads while idle are frames
//! (pings, window updates), not request heads, so only the idle timer applies.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The two timeouts.
#[derive(Debug, Clone, Copy)]
pub struct ConnTimeouts {
    /// Idle time between requests after which a connection is closed.
    pub keepalive: Duration,
    /// Time to receive a request head once its first byte arrived (and a
    /// connection's first request, counted from the accept).
    pub header: Duration,
}

/// What the service reports to the connection's [`TimedIo`].
#[derive(Debug, Default)]
pub struct Activity {
    requests: AtomicU64,
    responses: AtomicU64,
    http2: AtomicBool,
    /// A request head has begun arriving and has not been handed to the service.
    head: AtomicBool,
    /// The connection's task while it waits with a request in flight: hyper does
    /// not read again after writing a response until bytes arrive, so without this
    /// wake-up the idle timer would not start.
    busy_reader: Mutex<Option<Waker>>,
}

impl Activity {
    /// A request head was received (the service was called).
    pub fn request_started(&self, version: http::Version) {
        if version == http::Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Release);
    }

    /// Wraps a response body so that the connection counts the response as sent
    /// when the body is finished or dropped.
    pub fn track<B>(self: &Arc<Self>, body: B) -> TrackedBody<B> {
        TrackedBody {
            inner: body,
            activity: self.clone(),
        }
    }

    fn in_flight(&self) -> bool {
        self.responses.load(Ordering::Acquire) < self.requests.load(Ordering::Acquire)
    }

    /// Requests begun on this connection so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Acquire)
    }

    /// Whether an HTTP/1.1 connection is between requests: it has served a request,
    /// no response is in flight and no next head has begun. Its HTTP state can then
    /// be dropped and rebuilt when bytes arrive (`front::conn` parks it; hyper
    /// closes it only once the last response is flushed).
    pub fn between_requests(&self) -> bool {
        self.requests() > 0 && !self.in_flight() && !self.head.load(Ordering::Acquire)
    }
}

/// A response body that tells [`Activity`] when it is done.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    activity: Arc<Activity>,
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        self.activity.responses.fetch_add(1, Ordering::Release);
        let reader = self
            .activity
            .busy_reader
            .lock()
            .ok()
            .and_then(|mut w| w.take());
        if let Some(waker) = reader {
            waker.wake();
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests since `since`; `first` before the first request.
    Idle { since: Instant, first: bool },
    /// A request head began arriving at `since`.
    Head { since: Instant },
    /// A request is being served.
    Busy,
}

/// A connection's byte stream with the idle and header timers on its reads: when
/// one expires, the read fails with `TimedOut` and hyper closes the connection.
pub struct TimedIo<T> {
    inner: T,
    /// Bytes read from `inner` earlier and given back ([`TimedIo::give_back`]):
    /// read again before anything new.
    unread: Bytes,
    activity: Arc<Activity>,
    timeouts: ConnTimeouts,
    phase: Phase,
    requests_seen: u64,
    timer: Pin<Box<Sleep>>,
}

impl<T> TimedIo<T> {
    /// Wraps a just-accepted connection.
    pub fn new(inner: T, activity: Arc<Activity>, timeouts: ConnTimeouts) -> Self {
        let now = Instant::now();
        Self {
            inner,
            unread: Bytes::new(),
            activity,
            timeouts,
            phase: Phase::Idle {
                since: now,
                first: true,
            },
            requests_seen: 0,
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.header)),
        }
    }

    /// Brings the phase up to date with what the service reported. A request may
    /// have begun and ended between two reads: counting them catches that too.
    fn observe(&mut self) {
        let requests = self.activity.requests.load(Ordering::Acquire);
        if self.activity.in_flight() {
            self.set_phase(Phase::Busy);
        } else if self.phase == Phase::Busy || requests != self.requests_seen {
            self.set_phase(Phase::Idle {
                since: Instant::now(),
                first: false,
            });
        }
        self.requests_seen = requests;
    }

    /// Puts `bytes` back in front of what is still unread: a reader that took them
    /// but did not use them (the protocol sniff, a hyper connection being parked)
    /// hands them to the next one.
    pub fn give_back(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.unread = if self.unread.is_empty() {
                bytes
            } else {
                [bytes, std::mem::take(&mut self.unread)].concat().into()
            };
        }
    }

    /// Moves to `phase`, telling [`Activity`] whether a head is arriving.
    fn set_phase(&mut self, phase: Phase) {
        let head = matches!(phase, Phase::Head { .. });
        if head != matches!(self.phase, Phase::Head { .. }) {
            self.activity.head.store(head, Ordering::Release);
        }
        self.phase = phase;
    }

    fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle { since, first: true } => Some(since + self.timeouts.header),
            Phase::Idle { since, .. } => Some(since + self.timeouts.keepalive),
            Phase::Head { since } => Some(since + self.timeouts.header),
            Phase::Busy => None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.observe();
        let before = buf.filled().len();
        let polled = if self.unread.is_empty() {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        } else {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            bytes::Buf::advance(&mut self.unread, n);
            Poll::Ready(Ok(()))
        };
        if let Poll::Ready(result) = polled {
            let got_bytes = buf.filled().len() > before;
            if got_bytes && !self.activity.http2.load(Ordering::Relaxed) {
                if let Phase::Idle { .. } = self.phase {
                    self.set_phase(Phase::Head {
                        since: Instant::now(),
                    });
                }
            }
            return Poll::Ready(result);
        }
        let Some(deadline) = self.deadline() else {
            if let Ok(mut reader) = self.activity.busy_reader.lock() {
                if !reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *reader = Some(cx.waker().clone());
                }
            }
            // A response that ended before the waker was stored would not wake it.
            if !self.activity.in_flight() {
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        };
        if Instant::now() >= deadline {
            let what = match self.phase {
                Phase::Head { .. } | Phase::Idle { first: true, .. } => "request head",
                _ => "keep-alive idle",
            };
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} timeout"),
            )));
        }
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        // Registers the waker; a wake-up re-checks the deadline above.
        let _ = self.timer.as_mut().poll(cx);
        Poll::Pending
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUTS: ConnTimeouts = ConnTimeouts {
        keepalive: Duration::from_secs(60),
        header: Duration::from_secs(5),
    };

    async fn read_error(io: &mut TimedIo<tokio::io::DuplexStream>) -> io::Error {
        let mut buf = [0u8; 64];
        loop {
            match io.read(&mut buf).await {
                Ok(0) => panic!("unexpected end of stream"),
                Ok(_) => continue,
                Err(e) => return e,
            }
        }
    }

    #[tokio::test]
    async fn bytes_given_back_are_read_again_first_in_order() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = TimedIo::new(server, Arc::default(), TIMEOUTS);
        io.give_back(Bytes::from_static(b"lo"));
        io.give_back(Bytes::from_static(b"hel"));
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello world");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_new_connection_gets_the_header_timeout() {
        let (_client, server) = tokio::io::duplex(64);
        let mut io = TimedIo::new(server, Arc::default(), TIMEOUTS);
        let start = Instant::now();
        let err = read_error(&mut io).await;
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), TIMEOUTS.header);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_head_gets_the_header_timeout_even_after_a_long_idle() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let mut io = TimedIo::new(server, activity.clone(), TIMEOUTS);
        // One request served...
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        activity.request_started(http::Version::HTTP_11);
        drop(activity.track(()));
        // ... then idle for longer than the header timeout: still open.
        let idle = tokio::time::sleep(TIMEOUTS.header * 3);
        tokio::select! {
            r = io.read(&mut buf) => panic!("read ended while idle: {r:?}"),
            () = idle => {}
        }
        // A head starts and stalls: closed one header timeout later.
        client.write_all(b"GET /next HT").await.unwrap();
        let start = Instant::now();
        let err = read_error(&mut io).await;
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() <= TIMEOUTS.header, "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_gets_the_keepalive_timeout() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let mut io = TimedIo::new(server, activity.clone(), TIMEOUTS);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        activity.request_started(http::Version::HTTP_11);
        let response = activity.track(());
        // Busy: neither timer runs while the response is in flight.
        tokio::select! {
            r = io.read(&mut buf) => panic!("read ended while busy: {r:?}"),
            () = tokio::time::sleep(TIMEOUTS.keepalive * 2) => {}
        }
        drop(response);
        let start = Instant::now();
        let err = read_error(&mut io).await;
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), TIMEOUTS.keepalive);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_frames_while_idle_do_not_start_the_header_timer() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let mut io = TimedIo::new(server, activity.clone(), TIMEOUTS);
        client.write_all(b"preface").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        activity.request_started(http::Version::HTTP_2);
        drop(activity.track(()));
        let start = Instant::now();
        // A ping every header timeout / 2: no head timer, only the idle one.
        loop {
            tokio::select! {
                r = io.read(&mut buf) => match r {
                    Ok(_) => continue,
                    Err(e) => {
                        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
                        break;
                    }
                },
                () = tokio::time::sleep(TIMEOUTS.header / 2) => {
                    client.write_all(b"ping").await.unwrap();
                }
            }
        }
        assert!(
            start.elapsed() >= TIMEOUTS.keepalive,
            "{:?}",
            start.elapsed()
        );
    }
}
