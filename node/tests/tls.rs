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
    let node = TestNode::start_tls(&data, &cert, &key, &[]);
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
    let certs = fanz_node::tls::CertStore::open(vec![fanz_node::tls::CertSource {
        names: Vec::new(),
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        index: None,
    }])
    .unwrap();
    let config = fanz_node::tls::server_config(certs).unwrap();
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

/// The end-entity certificate the node presents on its TCP port to a client that
/// asks for `name` and trusts `trusted`.
async fn presented_over_tcp(
    addr: std::net::SocketAddr,
    name: &str,
    trusted: &[rustls::pki_types::CertificateDer<'static>],
) -> rustls::pki_types::CertificateDer<'static> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(trusted, &[])));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// The same over QUIC (HTTP/3).
async fn presented_over_quic(
    addr: std::net::SocketAddr,
    name: &str,
    trusted: &[rustls::pki_types::CertificateDer<'static>],
) -> rustls::pki_types::CertificateDer<'static> {
    let tls = client_config(trusted, &[b"h3"]);
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint.connect(addr, name).unwrap().await.unwrap();
    let chain = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .unwrap();
    conn.close(0u32.into(), b"done");
    chain[0].clone()
}

fn client_config(
    trusted: &[rustls::pki_types::CertificateDer<'static>],
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// `[[tls.certs]]`: a certificate per server name, wildcards for one label, the
/// default for the rest, on the main listener and HTTP/3 alike (issue 20, part 4).
#[tokio::test]
async fn certificates_are_chosen_by_server_name_over_tcp_and_quic() {
    let (tmp, data) = data_dir();
    let dir = tmp.path();
    let (cert, key, default) = certificate(dir);
    let (a_cert, a_key, a) = self_signed_certificate(dir, "a", "a.example");
    let (b_cert, b_key, b) = self_signed_certificate(dir, "b", "*.b.example");
    let file = dir.join("fanz.toml");
    std::fs::write(
        &file,
        format!(
            "tls_cert = {:?}\ntls_key = {:?}\n\n[[tls.certs]]\nnames = [\"a.example\"]\ncert = {:?}\nkey = {:?}\n\n[[tls.certs]]\nnames = [\"*.b.example\"]\ncert = {:?}\nkey = {:?}\n",
            cert, key, a_cert, a_key, b_cert, b_key
        ),
    )
    .unwrap();
    let node = TestNode::start(&data, &["--config", file.to_str().unwrap()]);
    // The HTTP/3 port, from the Alt-Svc the TLS listener advertises.
    let resp = https_client(default.clone())
        .get(
            format!("https://localhost:{}/kv/x", node.http.port())
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    let alt = resp.headers()["alt-svc"].to_str().unwrap().to_string();
    let port: u16 = alt.split(['"', ':']).nth(2).unwrap().parse().unwrap();
    let h3 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let trusted = [default.clone(), a.clone(), b.clone()];
    for (name, expected) in [
        ("a.example", &a),
        ("x.b.example", &b),
        ("localhost", &default),
    ] {
        assert_eq!(
            &presented_over_tcp(node.http, name, &trusted).await,
            expected,
            "{name} over TCP"
        );
        assert_eq!(
            &presented_over_quic(h3, name, &trusted).await,
            expected,
            "{name} over QUIC"
        );
    }
}

/// A renewed certificate (the files replaced, as certbot or cert-manager do) is
/// presented to the next handshake without a restart or a dropped connection; files
/// that do not load leave the running certificate in place.
#[tokio::test]
async fn a_renewed_certificate_is_served_without_dropping_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tmp, data) = data_dir();
    let dir = tmp.path();
    let (cert, key, first) = certificate(dir);
    let node = TestNode::start_tls(&data, &cert, &key, &["--tls-watch", "100ms"]);
    // A keep-alive connection made with the first certificate.
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(
        std::slice::from_ref(&first),
        &[],
    )));
    let tcp = tokio::net::TcpStream::connect(node.http).await.unwrap();
    let mut open = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let exchange = async |conn: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        conn.write_all(b"GET /kv/nothing HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(exchange(&mut open).await.starts_with("HTTP/1.1 404"));

    // Renewal: new files in place of the old.
    let renewed_dir = tempfile::tempdir().unwrap();
    let (new_cert, new_key, second) = certificate(renewed_dir.path());
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    let both = [first.clone(), second.clone()];
    let start = std::time::Instant::now();
    while presented_over_tcp(node.http, "localhost", &both).await != second {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the renewed certificate was never presented; log:\n{}",
            node.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        exchange(&mut open).await.starts_with("HTTP/1.1 404"),
        "the connection made before the renewal is still served"
    );

    // A half-written renewal (a key that is not one): the running certificate stays.
    let failures = || node.log_text().matches("do not load").count();
    let before = failures();
    std::fs::write(&key, "not a key").unwrap();
    let start = std::time::Instant::now();
    while failures() == before {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "not noticed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        presented_over_tcp(node.http, "localhost", &both).await,
        second
    );
}
