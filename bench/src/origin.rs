//! `fanz-bench origin`: a small, fast origin that every target under test proxies, so
//! they all fetch the same objects.
//!
//! `GET /{size}/{anything}` answers `size` bytes (a plain number, or with a `k`
//! suffix for KiB, `m` for MiB; any other first segment gets `default_size`), with
//! `Cache-Control: max-age=…`, an `ETag` (a conditional request that matches gets
//! 304), `Last-Modified`, and `Surrogate-Key: t<n> all`, where `n` is a hash of the
//! path modulo `tags`. Bodies come from one shared buffer: serving costs no copy.
//! `GET /_stats` counts the object requests served (for hit ratios). A `PUT` is read
//! and answered 204 with nothing kept: the floor of an HTTP/1.1 write.
//!
//! Versioned (`--versioned`, for the fault harness): each path has a generation,
//! 0 at first; `POST /_publish/{path}` makes the next one and answers its number.
//! A `GET` then answers the text `{path} g{generation}` (its ETag follows the
//! generation), with `Surrogate-Key: {last segment} all`, so a tag purge of the
//! page's name refetches exactly it.

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
    /// Generations per path, published with `POST /_publish/{path}`.
    pub versioned: bool,
}

impl Default for OriginOptions {
    fn default() -> Self {
        Self {
            max_age: 3600,
            default_size: 1024,
            max_size: 64 << 20,
            tags: 100,
            versioned: false,
        }
    }
}

/// Parses the size segment: `1024`, `64k`, `1m`.
fn size_of(segment: &str, options: &OriginOptions) -> usize {
    let (digits, unit) = if let Some(kib) = segment.strip_suffix(['k', 'K']) {
        (kib, 1 << 10)
    } else if let Some(mib) = segment.strip_suffix(['m', 'M']) {
        (mib, 1 << 20)
    } else {
        (segment, 1)
    };
    let parsed = digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit));
    parsed.unwrap_or(options.default_size).min(options.max_size)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The generation of every published path (versioned mode).
type Generations = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>;

/// Versioned mode's answer: the path's current generation in the body and ETag.
fn versioned_answer(
    path: &str,
    generations: &Generations,
    options: &OriginOptions,
) -> Response<Full<Bytes>> {
    if let Some(published) = path.strip_prefix("/_publish") {
        let mut all = generations.lock().expect("generations lock");
        let generation = all.entry(published.to_string()).or_insert(0);
        *generation += 1;
        return Response::new(Full::new(Bytes::from(generation.to_string())));
    }
    let generation = generations
        .lock()
        .expect("generations lock")
        .get(path)
        .copied()
        .unwrap_or(0);
    let mut response = Response::new(Full::new(Bytes::from(format!("{path} g{generation}"))));
    let h = response.headers_mut();
    let cc = format!("public, max-age={}", options.max_age);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&cc).expect("ascii"),
    );
    let etag = format!("\"{:x}-g{generation}\"", fnv(path.as_bytes()));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    let name = path.rsplit('/').next().unwrap_or("");
    if let Ok(v) = HeaderValue::from_str(&format!("{name} all")) {
        h.insert("surrogate-key", v);
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// The answer to one request.
pub fn answer(
    path: &str,
    request_headers: &http::HeaderMap,
    buffer: &Bytes,
    options: &OriginOptions,
) -> Response<Full<Bytes>> {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let size = size_of(first, options);
    let hash = fnv(path.as_bytes());
    let etag = format!("\"{hash:x}-{size}\"");
    let matches = request_headers
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

/// A `PUT`: the body is read and dropped, and the answer is an empty 204. What an
/// HTTP/1.1 write costs with nothing stored: the floor under the node's KV `PUT`
/// (`bench/peers/kv_writes.sh` measures it beside Redis).
async fn sink(req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = match req.into_body().collect().await {
        Ok(_) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::BAD_REQUEST,
    };
    response
}

/// Serves on `listener` until the task is dropped (HTTP/1.1 and HTTP/2).
/// `GET /_stats` answers `{"requests": N}`: the object requests served so far, so a
/// script can tell how many of a proxy's requests missed.
pub async fn serve(listener: tokio::net::TcpListener, options: OriginOptions) {
    let buffer = Bytes::from(vec![b'x'; options.max_size]);
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let generations = Generations::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (buffer, options, served) = (buffer.clone(), options.clone(), served.clone());
        let generations = generations.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = if req.method() == http::Method::PUT {
                    None
                } else if req.uri().path() == "/_stats" {
                    let n = served.load(std::sync::atomic::Ordering::Relaxed);
                    Some(Response::new(Full::new(Bytes::from(format!(
                        "{{\"requests\":{n}}}"
                    )))))
                } else if options.versioned {
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Some(versioned_answer(req.uri().path(), &generations, &options))
                } else {
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Some(answer(req.uri().path(), req.headers(), &buffer, &options))
                };
                async move {
                    Ok::<_, Infallible>(match response {
                        Some(response) => response,
                        None => sink(req).await,
                    })
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Serves HTTP/3 on `addr` with a self-signed certificate for `localhost` and
/// 127.0.0.1, written as PEM to `cert_out` for the client to trust, until the task is
/// dropped. `GET`s are answered as over HTTP/1.1 ([`answer`]), through the same h3 and
/// h3-quinn glue as the node: beside the HTTP/1.1 origin this is the floor of
/// HTTP/3 on this machine, what no HTTP/3 server built on them can beat.
pub async fn serve_h3(
    addr: SocketAddr,
    cert_out: &std::path::Path,
    options: OriginOptions,
) -> anyhow::Result<()> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names)?;
    std::fs::write(cert_out, cert.pem())?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let endpoint = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto)),
        addr,
    )?;
    eprintln!("fanz-bench origin serving HTTP/3 on {addr}");
    let buffer = Bytes::from(vec![b'x'; options.max_size]);
    while let Some(incoming) = endpoint.accept().await {
        let (buffer, options) = (buffer.clone(), options.clone());
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            let Ok(mut h3) = h3::server::builder()
                .build::<_, Bytes>(h3_quinn::Connection::new(connection))
                .await
            else {
                return;
            };
            while let Ok(Some(resolver)) = h3.accept().await {
                let (buffer, options) = (buffer.clone(), options.clone());
                tokio::spawn(async move {
                    let Ok((request, mut stream)) = resolver.resolve_request().await else {
                        return;
                    };
                    let (parts, body) =
                        answer(request.uri().path(), request.headers(), &buffer, &options)
                            .into_parts();
                    let body = http_body_util::BodyExt::collect(body)
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    if stream
                        .send_response(Response::from_parts(parts, ()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if !body.is_empty() && stream.send_data(body).await.is_err() {
                        return;
                    }
                    let _ = stream.finish().await;
                });
            }
        });
    }
    Ok(())
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
        assert_eq!(size_of("1m", &o), 1 << 20);
        assert_eq!(size_of("page", &o), 1024);
        assert_eq!(size_of("999999999999", &o), o.max_size);
    }

    #[test]
    fn a_versioned_page_answers_its_published_generation() {
        let o = OriginOptions {
            versioned: true,
            ..OriginOptions::default()
        };
        let generations = Generations::default();
        let body = |r: Response<Full<Bytes>>| {
            use http_body_util::BodyExt;
            let collected = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime")
                .block_on(r.into_body().collect())
                .expect("a full body");
            String::from_utf8(collected.to_bytes().to_vec()).unwrap()
        };
        let first = versioned_answer("/site/p1", &generations, &o);
        assert_eq!(first.headers()["surrogate-key"], "p1 all");
        assert_eq!(body(first), "/site/p1 g0");
        assert_eq!(
            body(versioned_answer("/_publish/site/p1", &generations, &o)),
            "1"
        );
        assert_eq!(
            body(versioned_answer("/site/p1", &generations, &o)),
            "/site/p1 g1"
        );
        assert_eq!(
            body(versioned_answer("/site/p2", &generations, &o)),
            "/site/p2 g0"
        );
    }
}
