//! fanz-bench refuses impossible parameters, and its closed loop measures a real
//! server (a hyper server on a free loopback port, over HTTP/1.1 and HTTP/2).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use fanz_bench::driver::{Protocol, QuicOptions, Target};
use fanz_bench::run::{run, Plan};
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
            },
            connections: 4,
            duration: Duration::from_millis(500),
            warmup: Duration::from_millis(100),
            quic: QuicOptions {
                ca_cert: None,
                max_udp_payload: 1452,
            },
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
