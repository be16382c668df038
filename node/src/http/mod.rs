//! HTTP primitives every layer uses: body types and constructors (`full`, `text`,
//! `json`, channel-fed and deadline-bounded bodies), bounded request reads, what a
//! handler answers ([`Answer`]), header parsing ([`headers`]), `Cache-Control`
//! directives ([`directives`]), `Cache-Status` ([`cache_status`]) and the trace
//! context ([`traceparent`]). A leaf: it imports nothing of the node's. The
//! listeners and the main port's service are in the `front` module.

pub mod cache_status;
pub mod directives;
pub mod headers;
pub mod range;
pub mod traceparent;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Error type of streamed bodies (an origin that fails mid-body).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Response body type of every handler: whole (KV values, errors) or streamed (origin
/// responses, collapsed fills).
pub type Body = BoxBody<Bytes, BoxError>;

/// Request body type every handler receives, whichever front end (hyper for
/// HTTP/1.1 and HTTP/2, h3 for HTTP/3) read it.
pub type ReqBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A handler's answer to a request: ready at once (a hit served from memory, a
/// refusal), or work still to do. An answer ready at once costs no future to build,
/// move or box, and no span: nothing that made it could have logged (a handler
/// goes the long way for anything that may log).
pub enum Answer {
    /// The response.
    Now(Response<Body>),
    /// The work that makes the response.
    Later(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl Answer {
    /// Work still to do.
    pub fn later(work: impl Future<Output = Response<Body>> + Send + 'static) -> Answer {
        Answer::Later(Box::pin(work))
    }

    /// The response, once the work is done.
    pub async fn resolve(self) -> Response<Body> {
        match self {
            Answer::Now(response) => response,
            Answer::Later(work) => work.await,
        }
    }
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A plain-text response saying why; every error answer of the node is one.
pub fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut body = message.into();
    body.push('\n');
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the limit.
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    /// The client took too long.
    #[error("request body not received within {0:?}")]
    Timeout(Duration),
    /// The connection failed or the framing was bad.
    #[error("could not read the request body: {0}")]
    Client(String),
}

impl BodyError {
    /// The answer for this error.
    pub fn response(&self) -> Response<Body> {
        let status = match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Client(_) => StatusCode::BAD_REQUEST,
        };
        let mut response = text(status, self.to_string());
        // The rest of the body is not read: the connection cannot be reused.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// Reads a whole body of at most `limit` bytes within `timeout`. A declared
/// `Content-Length` over the limit is refused before anything is read; a chunked body
/// is cut off as soon as it passes the limit, so nothing over it is ever buffered.
/// A body that came in one piece (the usual small one) is kept as it is, no copy.
pub async fn read_body<B>(body: B, limit: u64, timeout: Duration) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit {
        return Err(BodyError::TooLarge(limit));
    }
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut first = Bytes::new();
        let mut joined: Option<BytesMut> = None;
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Client(e.into().to_string()))?;
            let data = match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue, // trailers (not kept), or nothing
            };
            len += data.len() as u64;
            if len > limit {
                return Err(BodyError::TooLarge(limit));
            }
            match &mut joined {
                Some(joined) => joined.extend_from_slice(&data),
                None if first.is_empty() => first = data,
                None => {
                    let mut both = BytesMut::with_capacity(first.len() + data.len());
                    both.extend_from_slice(&first);
                    both.extend_from_slice(&data);
                    joined = Some(both);
                }
            }
        }
        Ok(joined.map_or(first, BytesMut::freeze))
    };
    // Most bodies are whole in the connection's buffer by the time they are read:
    // those are read without arming a timer (a timer entry per request showed in a
    // KV write's profile). Polling with a waker that does nothing is safe: the next
    // poll, under the timeout, registers the task's own.
    let mut read = std::pin::pin!(read);
    let at_once = read.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    if let Poll::Ready(done) = at_once {
        return done;
    }
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::Timeout(timeout)))
}

/// What a channel feeding a body carries: chunks, or chunks that may be errors.
pub trait Chunk: Send + 'static {
    /// The chunk, or why the body failed.
    fn into_chunk(self) -> Result<Bytes, BoxError>;
}

impl Chunk for Bytes {
    fn into_chunk(self) -> Result<Bytes, BoxError> {
        Ok(self)
    }
}

impl Chunk for Result<Bytes, BoxError> {
    fn into_chunk(self) -> Result<Bytes, BoxError> {
        self
    }
}

/// A body fed by a channel, ending when every sender is gone: the one way bodies
/// are streamed from a task (pumps, deadlines, near-cache watch streams).
pub fn channel_body<T: Chunk>(rx: tokio::sync::mpsc::Receiver<T>) -> Body {
    struct ChannelBody<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T: Chunk> hyper::body::Body for ChannelBody<T> {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
            self.0
                .poll_recv(cx)
                .map(|item| item.map(|c| c.into_chunk().map(hyper::body::Frame::data)))
        }
    }
    ChannelBody(rx).boxed()
}

/// Streams `body`, ending it with an error if it is not complete by `deadline`.
/// `hold` (a bulkhead slot, say) is kept until the body ends. Trailers are dropped.
pub fn with_deadline<B>(body: B, deadline: tokio::time::Instant, hold: impl Send + 'static) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let _hold = hold;
        let mut body = body;
        loop {
            let item = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => Some(Err::<Bytes, BoxError>(
                    "origin response not complete in time".into(),
                )),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some(Err(e.into())),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Some(Ok(data)),
                    Err(_) => continue,
                },
            };
            let Some(item) = item else { return };
            let last = item.is_err();
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    });
    channel_body(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body fed by the chunks given, then left open (`open`) or ended.
    fn chunks(parts: &[&'static [u8]], open: bool) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(parts.len().max(1));
        for part in parts {
            tx.try_send(Bytes::from_static(part)).unwrap();
        }
        if open {
            std::mem::forget(tx);
        }
        channel_body(rx)
    }

    #[tokio::test]
    async fn a_body_is_read_whole_within_its_limit_and_time() {
        let second = Duration::from_secs(1);
        let one: &'static [u8] = b"in one piece";
        let read = read_body(chunks(&[one], false), 100, second).await.unwrap();
        assert_eq!(read.as_ptr(), one.as_ptr(), "one piece is kept, not copied");
        let read = read_body(chunks(&[b"", b"a", b"", b"bc", b"d"], false), 4, second);
        assert_eq!(read.await.unwrap(), Bytes::from_static(b"abcd"));
        let over = read_body(chunks(&[b"ab", b"cde"], false), 4, second).await;
        assert!(matches!(over, Err(BodyError::TooLarge(4))), "{over:?}");
        let stalled = read_body(chunks(&[b"ab"], true), 4, Duration::from_millis(20)).await;
        assert!(matches!(stalled, Err(BodyError::Timeout(_))), "{stalled:?}");
        assert_eq!(read_body(chunks(&[], false), 4, second).await.unwrap(), "");
    }
}
