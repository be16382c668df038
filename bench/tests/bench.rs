//! fanz-bench refuses impossible parameters; its closed and open loops measure a real
//! server (a hyper server on a free loopback port, over HTTP/1.1 and HTTP/2, plain and
//! over TLS); its origin answers what the peer scripts rely on.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use fanz_bench::driver::{Connection, DriverOptions, Protocol, Target};
use fanz_bench::run::{run, Plan};
use fanz_bench::workload::{KeyDistribution, Workload};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[test]
fn impossible_parameters_are_refused_with_a_clear_message() {
    for (args, expected) in [
        (
            vec!["--url", "http://127.0.0.1:1/", "--protocol", "h9"],
            "unknown protocol",
        ),
        (
            vec!["--url", "http://127.0.0.1:1/", "--connections", "0"],
            "--connections",
        ),
        (
            vec!["--url", "http://127.0.0.1:1/", "--duration=-3"],
            "--duration",
        ),
        (vec!["--url", "not a url"], "--url"),
        (
            vec!["--url", "http://127.0.0.1:1/", "--zipf", "9"],
            "--zipf",
        ),
        (
            vec!["--url", "http://127.0.0.1:1/", "--writes", "1.5"],
            "--writes",
        ),
        (
            vec!["--url", "http://127.0.0.1:1/", "--rate", "0"],
            "--rate",
        ),
        (
            vec!["--url", "http://127.0.0.1:1/", "--purge-rate", "10"],
            "--admin",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fanz-bench"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn the_closed_loop_measures_a_real_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"0123456789",
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    for protocol in [Protocol::H1, Protocol::H2] {
        let plan = Plan {
            protocol,
            target: Target {
                addr,
                host: addr.to_string(),
                path: "/x".into(),
                tls: false,
            },
            connections: 4,
            duration: Duration::from_millis(500),
            warmup: Duration::from_millis(100),
            driver: DriverOptions::none(),
            workload: Workload::fixed("/x"),
            rate: None,
            seed: 1,
            purges: None,
            progress: false,
        };
        let outcome = run(&plan).await.unwrap();
        assert!(
            outcome.requests > 10,
            "{protocol:?}: only {} requests",
            outcome.requests
        );
        assert_eq!(outcome.errors, 0, "{protocol:?}");
        assert_eq!(outcome.bytes, outcome.requests * 10);
        assert!(outcome.ms(0.99) > 0.0);
    }
    server.abort();
}

#[tokio::test]
async fn https_targets_are_driven_over_tls_trusting_the_given_certificate() {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("fanz-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("cert.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(signing_key.serialize_der()).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Answers with the protocol the TLS handshake chose, so the test sees ALPN work.
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let alpn = stream
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .unwrap_or(b"none")
                    .to_vec();
                let service = hyper::service::service_fn(move |_req| {
                    let alpn = Bytes::from(alpn.clone());
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(alpn))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let target = Target {
        addr,
        host: "localhost".into(),
        path: "/x".into(),
        tls: true,
    };
    let trusting = DriverOptions {
        ca_cert: Some(ca.clone()),
        ..DriverOptions::none()
    };
    for (protocol, alpn) in [(Protocol::H1, "http/1.1"), (Protocol::H2, "h2")] {
        let mut conn = Connection::open(protocol, &target, &trusting)
            .await
            .unwrap();
        assert_eq!(conn.get(&target).await.unwrap(), alpn.len(), "{protocol:?}");
        // Without the certificate to trust, no connection.
        let refused = Connection::open(protocol, &target, &DriverOptions::none()).await;
        assert!(
            refused.is_err_and(|e| e.to_string().contains("--ca-cert")),
            "{protocol:?}"
        );
    }
    // A certificate for another name is refused.
    let other = Target {
        host: "elsewhere".into(),
        ..target.clone()
    };
    assert!(Connection::open(Protocol::H1, &other, &trusting)
        .await
        .is_err());
    server.abort();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A server answering 10 bytes, stalling `stall` on every `every`-th request; counts
/// requests by method and path.
async fn stalling_server(
    every: u64,
    stall: Duration,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (s, counter) = (s.clone(), counter.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (s, counter) = (s.clone(), counter.clone());
                        async move {
                            let name = format!("{} {}", req.method(), req.uri().path());
                            *s.lock().unwrap().entry(name).or_insert(0) += 1;
                            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if n % every == every - 1 {
                                tokio::time::sleep(stall).await;
                            }
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"0123456789"),
                            )))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn the_open_loop_charges_a_stall_to_every_request_it_delayed() {
    // One connection at 200 requests/s for 1 s; every 50th request stalls 200 ms.
    // A closed loop would record one slow request per stall; the open loop records
    // the ~40 requests that should have gone out meanwhile as late too.
    let (addr, _) = stalling_server(50, Duration::from_millis(200)).await;
    let plan = |rate: Option<f64>| Plan {
        protocol: Protocol::H1,
        target: Target {
            addr,
            host: addr.to_string(),
            path: "/x".into(),
            tls: false,
        },
        connections: 1,
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        driver: DriverOptions::none(),
        workload: Workload::fixed("/x"),
        rate,
        seed: 1,
        purges: None,
        progress: false,
    };
    let open = run(&plan(Some(200.0))).await.unwrap();
    assert!(
        (150..=210).contains(&open.requests),
        "the open loop keeps its schedule: {} requests",
        open.requests
    );
    let late = open.latency_us.count_between(50_000, u64::MAX);
    assert!(late >= 20, "only {late} requests charged with the stall");
    assert!(open.ms(0.9) >= 50.0, "p90 {} ms", open.ms(0.9));
    let closed = run(&plan(None)).await.unwrap();
    let closed_late = closed.latency_us.count_between(50_000, u64::MAX);
    assert!(closed_late < late, "closed {closed_late} vs open {late}");
}

#[tokio::test]
async fn keys_writes_and_purges_reach_the_server() {
    let (addr, seen) = stalling_server(u64::MAX, Duration::ZERO).await;
    let plan = Plan {
        protocol: Protocol::H1,
        target: Target {
            addr,
            host: addr.to_string(),
            path: "/kv/{key}".into(),
            tls: false,
        },
        connections: 2,
        duration: Duration::from_millis(500),
        warmup: Duration::ZERO,
        driver: DriverOptions::none(),
        workload: Workload {
            path: "/kv/{key}".into(),
            keys: 50,
            distribution: KeyDistribution::zipf(50, 1.0),
            writes: 0.5,
            value: Bytes::from_static(b"value"),
            sequential: None,
            tracking: 0.0,
        },
        rate: None,
        seed: 9,
        purges: Some(fanz_bench::run::PurgePlan {
            admin: addr,
            token: Some("t".into()),
            rate: Some(20.0),
            connections: 1,
            tags: 5,
        }),
        progress: false,
    };
    let outcome = run(&plan).await.unwrap();
    assert_eq!(outcome.errors, 0);
    let seen = seen.lock().unwrap().clone();
    let puts: u64 = seen
        .iter()
        .filter(|(k, _)| k.starts_with("PUT /kv/k"))
        .map(|(_, v)| v)
        .sum();
    let gets: u64 = seen
        .iter()
        .filter(|(k, _)| k.starts_with("GET /kv/k"))
        .map(|(_, v)| v)
        .sum();
    assert!(puts > 10 && gets > 10, "{seen:?}");
    assert!(
        seen.get("GET /kv/k0") > seen.get("GET /kv/k40"),
        "Zipf: k0 is the hottest"
    );
    let purges = outcome.purges.unwrap();
    assert!(
        (5..=12).contains(&purges.done),
        "{} purges at 20/s for 0.5 s",
        purges.done
    );
    assert_eq!(purges.failed, 0);
    assert_eq!(seen.get("POST /purge").copied().unwrap_or(0), purges.done);
}

// The sustained purge rate: closed-loop purgers alone (no other load), each posting
// its next purge when the last is answered; every purge sent is counted.
#[tokio::test]
async fn closed_loop_purgers_alone_post_back_to_back() {
    let (addr, seen) = stalling_server(u64::MAX, Duration::ZERO).await;
    let plan = Plan {
        protocol: Protocol::H1,
        target: Target {
            addr,
            host: addr.to_string(),
            path: "/".into(),
            tls: false,
        },
        connections: 0,
        duration: Duration::from_millis(300),
        warmup: Duration::ZERO,
        driver: DriverOptions::none(),
        workload: Workload::fixed("/"),
        rate: None,
        seed: 3,
        purges: Some(fanz_bench::run::PurgePlan {
            admin: addr,
            token: None,
            rate: None,
            connections: 3,
            tags: 5,
        }),
        progress: false,
    };
    let outcome = run(&plan).await.unwrap();
    assert_eq!(outcome.requests, 0, "no load but the purgers");
    let purges = outcome.purges.unwrap();
    assert_eq!(purges.failed, 0);
    // Far more than an open loop at any modest rate would send in 0.3 s.
    assert!(purges.done > 50, "{} purges in 0.3 s", purges.done);
    assert_eq!(
        seen.lock().unwrap().get("POST /purge").copied(),
        Some(purges.done)
    );
}

#[tokio::test]
async fn the_origin_serves_sized_tagged_revalidatable_objects() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = tokio::spawn(fanz_bench::origin::serve(
        listener,
        fanz_bench::origin::OriginOptions::default(),
    ));
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let get = |path: &str, etag: Option<&str>| {
        let mut req = hyper::Request::get(format!("http://{addr}{path}"));
        if let Some(e) = etag {
            req = req.header("if-none-match", e);
        }
        client.request(req.body(Full::new(Bytes::new())).unwrap())
    };
    let r = get("/64k/a", None).await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age=3600"));
    assert!(r.headers()["surrogate-key"]
        .to_str()
        .unwrap()
        .ends_with(" all"));
    use http_body_util::BodyExt;
    assert_eq!(
        r.into_body().collect().await.unwrap().to_bytes().len(),
        65536
    );
    let r = get("/64k/a", Some(&etag)).await.unwrap();
    assert_eq!(r.status(), 304);
    let r = get("/page", None).await.unwrap();
    assert_eq!(
        r.into_body().collect().await.unwrap().to_bytes().len(),
        1024
    );
    let r = get("/_stats", None).await.unwrap();
    let stats = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&stats[..], br#"{"requests":3}"#);
    origin.abort();
}
