//! TLS: termination on the main listener (ALPN h2 and http/1.1) and HTTPS origins
//! trusted through `origin_ca_file`, with certificates made by rcgen for the test.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::origin::respond;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A self-signed certificate for `localhost`, written as PEM files in `dir`.
fn certificate(dir: &Path) -> (PathBuf, PathBuf, rustls::pki_types::CertificateDer<'static>) {
    self_signed_certificate(dir, "cert", "localhost")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An HTTPS client that trusts `cert` only.
fn https_client(
    cert: rustls::pki_types::CertificateDer<'static>,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

#[tokio::test]
async fn the_main_listener_terminates_tls_and_negotiates_h2() {
    let (_tmp, data) = data_dir();
    let (cert, key, der) = certificate(_tmp.path());
    let node = TestNode::start(
        &data,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let client = https_client(der);
    let base = format!("https://localhost:{}", node.http.port());
    let put = Request::put(format!("{base}/kv/secret"))
        .body(Full::new(Bytes::from_static(b"over tls")))
        .unwrap();
    assert_eq!(
        client.request(put).await.unwrap().status(),
        StatusCode::CREATED
    );
    let resp = client
        .get(format!("{base}/kv/secret").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        resp.version(),
        http::Version::HTTP_2,
        "ALPN did not pick h2"
    );
    assert_eq!(
        &resp.into_body().collect().await.unwrap().to_bytes()[..],
        b"over tls"
    );
    // Cleartext HTTP to the TLS port gets no HTTP answer.
    let answer = raw_request(
        node.http,
        b"GET /kv/secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(!answer.contains("over tls"), "{answer}");
}

/// A TLS origin on a free port, answering every request with "secure origin".
async fn tls_origin(
    cert: &Path,
    key: &Path,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let config = fanz_node::tls::server_config(cert, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(respond(
                        200,
                        &[("cache-control", "max-age=60")],
                        "secure origin",
                    ))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_origins_are_trusted_through_the_configured_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key, _) = certificate(tmp.path());
    let (addr, origin) = tls_origin(&cert, &key).await;
    let url = format!("https://localhost:{}", addr.port());

    let trusted = TestNode::start(
        &tmp.path().join("a"),
        &["--origin", &url, "--origin-ca-file", cert.to_str().unwrap()],
    );
    let r = send(http::Method::GET, &trusted.url("/page"), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "secure origin");
    let r = send(http::Method::GET, &trusted.url("/page"), &[], "").await;
    assert!(r.header("cache-status").unwrap().starts_with("fanz; hit"));

    let untrusted = TestNode::start(
        &tmp.path().join("b"),
        &["--origin", &url, "--origin-retries", "0"],
    );
    let r = send(http::Method::GET, &untrusted.url("/page"), &[], "").await;
    assert_eq!(
        r.status,
        StatusCode::BAD_GATEWAY,
        "an origin with an unknown CA was trusted"
    );
    origin.abort();
}

#[test]
fn bad_tls_settings_stop_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .args([
                "--data-dir",
                tmp.path().join("d").to_str().unwrap(),
                "--http-addr",
                &free_addr().to_string(),
                "--admin-addr",
                &free_addr().to_string(),
            ])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--tls-cert", "/nonexistent.pem"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("tls_key"), "{err}");
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let (code, err) = run(&[
        "--tls-cert",
        junk.to_str().unwrap(),
        "--tls-key",
        junk.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("tls_cert"), "{err}");
}
