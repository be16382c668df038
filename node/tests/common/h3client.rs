//! A real HTTP/3 client for tests (quinn + h3), trusting the node's certificate.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;

use super::{send, TestNode};

pub struct H3Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The node's HTTP/3 address, from the Alt-Svc it advertises over TCP.
pub async fn h3_addr(node: &TestNode) -> SocketAddr {
    let r = send(Method::GET, &node.admin_url("/healthz"), &[], "").await;
    assert!(
        r.header("alt-svc").is_none(),
        "the admin port does not advertise HTTP/3"
    );
    let r = send(Method::GET, &node.url("/kv/anything"), &[], "").await;
    let alt = r.header("alt-svc").expect("Alt-Svc on the main port");
    let port: u16 = alt
        .split(":")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(alt.contains("h3=") && alt.contains("ma="), "{alt}");
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One HTTP/3 request, trusting only `cert`.
pub async fn h3_request(
    addr: SocketAddr,
    cert: &Path,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> H3Reply {
    try_h3_request(addr, cert, method, path, headers, body)
        .await
        .expect("HTTP/3 request")
}

/// One HTTP/3 request; `Err` if the stream or the connection failed.
pub async fn try_h3_request(
    addr: SocketAddr,
    cert: &Path,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<H3Reply, String> {
    let (endpoint, mut send_request, drive) =
        tokio::time::timeout(std::time::Duration::from_secs(10), h3_connect(addr, cert))
            .await
            .map_err(|_| "QUIC handshake timed out".to_string())?;
    let exchange = h3_exchange(&mut send_request, method, path, headers, body);
    let reply = tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "timed out".to_string())?;
    drop(send_request);
    drive.abort();
    endpoint.close(0u32.into(), b"done");
    reply
}

/// A QUIC + HTTP/3 client connection to the node.
pub async fn h3_connect(
    addr: SocketAddr,
    cert: &Path,
) -> (
    quinn::Endpoint,
    h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    tokio::task::JoinHandle<h3::error::ConnectionError>,
) {
    let endpoint = h3_endpoint(cert, false);
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let (send_request, drive) = h3_over(conn).await;
    (endpoint, send_request, drive)
}

/// A client endpoint trusting only `cert`; with `early_data` it keeps resumption
/// tickets and may send 0-RTT data on later connections.
pub fn h3_endpoint(cert: &Path, early_data: bool) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(cert).unwrap())
        .unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.enable_early_data = early_data;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    endpoint
}

/// HTTP/3 over an established (or 0-RTT) QUIC connection, with its driver task.
pub async fn h3_over(
    conn: quinn::Connection,
) -> (
    h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    tokio::task::JoinHandle<h3::error::ConnectionError>,
) {
    let (mut driver, send_request) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    let drive = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    (send_request, drive)
}

/// Sends one request on an open HTTP/3 connection and reads the whole reply.
pub async fn h3_exchange(
    send_request: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<H3Reply, String> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body: Bytes = body.into();
    let mut stream = send_request
        .send_request(req.body(()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    if !body.is_empty() {
        stream.send_data(body).await.map_err(|e| e.to_string())?;
    }
    // A server may answer before it has read the whole request and stop the
    // request side (RFC 9114 §4.1); finishing can then fail, and the response must
    // still be read, not discarded.
    let _ = stream.finish().await;
    let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
        out.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    Ok(H3Reply {
        status: resp.status(),
        headers: resp.headers().clone(),
        body: out.freeze(),
    })
}
