//! `fanz-bench origin`: a small, fast origin that every target under test proxies, so
//! they all fetch the same objects.
//!
//! `GET /{size}/{anything}` answers `size` bytes (a plain number, or with a `k`
//! suffix for KiB; any other first segment gets `default_size`), with
//! `Cache-Control: max-age=…`, an `ETag` (a conditional request that matches gets
//! 304), `Last-Modified`, and `Surrogate-Key: t<n> all`, where `n` is a hash of the
//! path modulo `tags`. Bodies come from one shared buffer: serving costs no copy.
//! `GET /_stats` counts the object requests served (for hit ratios).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How the origin answers.
#[derive(Debug, Clone)]
pub struct OriginOptions {
    /// `max-age` of every response, seconds.
    pub max_age: u64,
    /// Size when the path names none.
    pub default_size: usize,
    /// Largest size served.
    pub max_size: usize,
    /// Number of distinct tags.
    pub tags: u64,
}

impl Default for OriginOptions {
    fn default() -> Self {
        Self {
            max_age: 3600,
            default_size: 1024,
            max_size: 64 << 20,
            tags: 100,
        }
    }
}

/// Parses the size segment: `1024`, `64k`.
fn size_of(segment: &str, options: &OriginOptions) -> usize {
    let parsed = match segment.strip_suffix(['k', 'K']) {
        Some(kib) => kib.parse::<usize>().ok().map(|n| n * 1024),
        None => segment.parse::<usize>().ok(),
    };
    parsed.unwrap_or(options.default_size).min(options.max_size)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The answer to one request.
pub fn answer(
    req: &Request<hyper::body::Incoming>,
    buffer: &Bytes,
    options: &OriginOptions,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let size = size_of(first, options);
    let hash = fnv(path.as_bytes());
    let etag = format!("\"{hash:x}-{size}\"");
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Full::new(buffer.slice(..size.min(buffer.len()))))
    };
    let h = response.headers_mut();
    let cc = format!("public, max-age={}", options.max_age);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&cc).expect("ascii"),
    );
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii"));
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_static("Sat, 28 Nov 2026 00:00:00 GMT"),
    );
    let tags = format!("t{} all", hash % options.tags.max(1));
    h.insert(
        "surrogate-key",
        HeaderValue::from_str(&tags).expect("ascii"),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// Serves on `listener` until the task is dropped (HTTP/1.1 and HTTP/2).
/// `GET /_stats` answers `{"requests": N}`: the object requests served so far, so a
/// script can tell how many of a proxy's requests missed.
pub async fn serve(listener: tokio::net::TcpListener, options: OriginOptions) {
    let buffer = Bytes::from(vec![b'x'; options.max_size]);
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (buffer, options, served) = (buffer.clone(), options.clone(), served.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = if req.uri().path() == "/_stats" {
                    let n = served.load(std::sync::atomic::Ordering::Relaxed);
                    Response::new(Full::new(Bytes::from(format!("{{\"requests\":{n}}}"))))
                } else {
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    answer(&req, &buffer, &options)
                };
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds `addr` and serves forever.
pub async fn run(addr: SocketAddr, options: OriginOptions) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "fanz-bench origin listening on http://{}",
        listener.local_addr()?
    );
    serve(listener, options).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_come_from_the_first_segment() {
        let o = OriginOptions::default();
        assert_eq!(size_of("2048", &o), 2048);
        assert_eq!(size_of("64k", &o), 65536);
        assert_eq!(size_of("page", &o), 1024);
        assert_eq!(size_of("999999999999", &o), o.max_size);
    }
}
