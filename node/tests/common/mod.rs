//! Test harness: runs the real `fanz-node` binary on free loopback ports with a
//! temporary data directory, and talks to it with a real HTTP client (hyper).

#![allow(dead_code)] // each test binary uses a different part of the harness
#![allow(unreachable_pub)] // shared by test binaries; nothing here is a public API

pub mod cluster;
pub mod h3client;
pub mod origin;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

pub const TOKEN: &str = "test-admin-token";

/// A temporary directory and the data directory path inside it (not yet created).
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    (dir, data)
}

pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().unwrap()
}

/// How a test reaches the main port. Behaviour tests run once per protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 over TCP.
    H1,
    /// HTTP/2 with prior knowledge over TCP.
    H2,
    /// HTTP/3 over QUIC, trusting the node's development certificate.
    H3,
}

/// Every protocol the main port speaks.
pub const PROTOCOLS: [Proto; 3] = [Proto::H1, Proto::H2, Proto::H3];

/// Runs `test` once per protocol in [`PROTOCOLS`], naming each on stderr first (a
/// failure's output then says which protocol it was).
pub async fn for_each_protocol(test: impl AsyncFn(Proto)) {
    for proto in PROTOCOLS {
        eprintln!("protocol: {proto:?}");
        test(proto).await;
    }
}

/// Runs `test` once per protocol, each time on a fresh node started with `extra`
/// (as [`TestNode::start`]) and spoken to in that protocol.
pub async fn on_a_fresh_node_per_protocol(extra: &[&str], test: impl AsyncFn(&TestNode)) {
    for_each_protocol(async |proto| {
        let (_tmp, data) = data_dir();
        let node = TestNode::start(&data, extra).with_proto(proto);
        test(&node).await;
    })
    .await;
}

/// A running `fanz-node` process. Killed when dropped.
pub struct TestNode {
    /// The protocol [`request`] (and `put`, `get`) use.
    pub proto: Proto,
    h3: std::sync::OnceLock<SocketAddr>,
    pub child: Option<Child>,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// The Redis-protocol port (`resp_addr`).
    pub resp: SocketAddr,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    /// Environment variables set for the process (test hooks).
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_fanz-node")
}

impl TestNode {
    /// Starts a node with the admin token set and waits until it is ready.
    pub fn start(data_dir: &Path, extra: &[&str]) -> TestNode {
        let mut args: Vec<String> = vec!["--admin-token".into(), TOKEN.into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_with(data_dir, args)
    }

    /// [`Self::start`] with the main listener speaking TLS with `cert` and `key`.
    pub fn start_tls(data_dir: &Path, cert: &Path, key: &Path, extra: &[&str]) -> TestNode {
        let mut args = vec![
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        args.extend(extra);
        Self::start(data_dir, &args)
    }

    pub fn start_with(data_dir: &Path, args: Vec<String>) -> TestNode {
        // Ports are picked free but not held, so another test can take one first;
        // then the node exits at once and we try again with fresh ports.
        for _ in 0..5 {
            match Self::try_start_with(data_dir, args.clone()) {
                Ok(node) => return node,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("fanz-node exited during start-up; log:\n{log}"),
            }
        }
        panic!("no free ports after five tries");
    }

    /// Starts a node; `Err(log)` if it exited during start-up.
    pub fn try_start_with(data_dir: &Path, args: Vec<String>) -> Result<TestNode, String> {
        Self::try_start_with_env(data_dir, args, Vec::new())
    }

    /// [`Self::try_start_with`] with environment variables for the process.
    pub fn try_start_with_env(
        data_dir: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Result<TestNode, String> {
        let mut node = TestNode {
            proto: Proto::H1,
            h3: std::sync::OnceLock::new(),
            child: None,
            http: free_addr(),
            admin: free_addr(),
            resp: free_addr(),
            data_dir: data_dir.to_path_buf(),
            args,
            env,
            log: data_dir.with_extension("log"),
        };
        node.try_spawn()?;
        Ok(node)
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("fanz-node exited during start-up; log:\n{log}");
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // Tests that give a config file set the log level there (the environment
        // would win over it).
        let log_level = if self.args.iter().any(|a| a == "--config") {
            None
        } else {
            Some("info,fanz_node::cluster=debug")
        };
        let mut command = Command::new(binary());
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(level) = log_level {
            command.env("FANZ_LOG_LEVEL", level);
        }
        // A free port of its own, unless the test sets one (or `off`).
        if !self.args.iter().any(|a| a == "--resp-addr") {
            command.arg("--resp-addr").arg(self.resp.to_string());
        }
        let child = command
            .arg("--http-addr")
            .arg(self.http.to_string())
            .arg("--admin-addr")
            .arg(self.admin.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--memory-capacity")
            .arg("64MiB")
            // A free UDP port: tests run in parallel (the real one is in Alt-Svc).
            .arg("--h3-addr")
            .arg("127.0.0.1:0")
            .arg("--disk-capacity")
            .arg("64MiB")
            .args(&self.args)
            .stdout(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.log.with_extension("out"))
                    .unwrap(),
            )
            .stderr(log)
            .spawn()
            .expect("spawn fanz-node");
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("({status}) {}", self.log_text()));
            }
            if let Ok(mut s) = std::net::TcpStream::connect(self.admin) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ =
                    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.1 200") {
                    return Ok(());
                }
            }
            assert!(
                Instant::now() < deadline,
                "fanz-node not ready after 30 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the node wrote on standard output (the access log).
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("out")).unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The process's resident memory (`VmRSS`), bytes.
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), "TERM");
        self.terminate_after_signal()
    }

    /// Waits (bounded) for a node already sent SIGTERM to exit.
    pub fn terminate_after_signal(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("fanz-node did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the same node again (same data directory and ports).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        self.spawn();
    }

    /// The same node reached over `proto`.
    pub fn with_proto(mut self, proto: Proto) -> Self {
        self.proto = proto;
        self
    }

    /// Scheme and authority of the URLs this node caches for requests over `proto`
    /// (what an admin purge by URL names).
    pub fn base_url(&self) -> String {
        match self.proto {
            Proto::H1 | Proto::H2 => format!("http://{}", self.http),
            Proto::H3 => "https://localhost".to_string(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Polls /metrics until the disk tier has written at least `bytes`.
    pub async fn wait_disk_written(&self, bytes: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let metrics = self.metrics().await;
            let written =
                metric_value(&metrics, "fanz_cache_tier_bytes{tier=\"disk\"}").unwrap_or(0.0);
            if written >= bytes as f64 {
                // Counted once written; give it a moment all the same.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "disk tier wrote {written} bytes, expected {bytes}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let r = send(
            Method::GET,
            &self.admin_url("/metrics"),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        r.text()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{name} {pid} failed");
}

/// A GET on the admin listener with `token` as its bearer.
pub async fn admin_get(node: &TestNode, path: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    send(
        Method::GET,
        &node.admin_url(path),
        &[("authorization", &auth)],
        "",
    )
    .await
}

/// `fanz_config_reloads_total{result=...}` as `token` may read it; `None` when
/// `token` does not open the metrics.
pub async fn reloads(node: &TestNode, token: &str, result: &str) -> Option<f64> {
    let metrics = admin_get(node, "/metrics", token).await;
    if metrics.status != StatusCode::OK {
        return None;
    }
    metric_value(
        &metrics.text(),
        &format!("fanz_config_reloads_total{{result=\"{result}\"}}"),
    )
}

/// Waits until the node has counted `n` reloads with `result`, reading the metrics
/// with `token`. Wait on this, not on the reload's effect: an effect that already
/// held before the reload (a token valid before and after) proves nothing.
pub async fn wait_reloads(node: &TestNode, token: &str, result: &str, n: f64) {
    let start = Instant::now();
    while reloads(node, token, result).await != Some(n) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no {result} reload #{n}; log:\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A PUT of `body` to `/kv/{key}` on an open keep-alive connection, its answer
/// read at once (no client library in between: the tests that kill a node right
/// after acknowledged writes want nothing queued on the way); the status line.
pub fn put_on(conn: &mut std::net::TcpStream, key: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let head = format!(
        "PUT /kv/{key} HTTP/1.1\r\nHost: n\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(format!("{head}{body}").as_bytes()).unwrap();
    let mut answer = [0u8; 1024];
    let n = conn.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    answer.lines().next().unwrap_or_default().to_string()
}

/// Value of a sample line in Prometheus text format.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// Sends raw bytes on a new connection and returns what comes back (bounded wait).
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).expect("write request");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One request with a fresh HTTP/1.1 client.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    send_over(false, method, url, headers, body).await
}

/// One request with a fresh client, HTTP/2 (prior knowledge) when `h2`.
pub async fn send_over(
    h2: bool,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("read body")
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// One request to the node's main port over the node's protocol.
pub async fn request(
    node: &TestNode,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    match node.proto {
        Proto::H1 => send(method, &node.url(path), headers, body).await,
        Proto::H2 => send_over(true, method, &node.url(path), headers, body).await,
        Proto::H3 => {
            let addr = match node.h3.get() {
                Some(addr) => *addr,
                None => {
                    let addr = h3client::h3_addr(node).await;
                    *node.h3.get_or_init(|| addr)
                }
            };
            let r = h3client::h3_request(
                addr,
                &node.data_dir.join("dev-cert.pem"),
                method,
                path,
                headers,
                body,
            )
            .await;
            Reply {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }
        }
    }
}

pub async fn put(node: &TestNode, key: &str, value: &str, headers: &[(&str, &str)]) -> Reply {
    request(
        node,
        Method::PUT,
        &format!("/kv/{key}"),
        headers,
        value.to_string(),
    )
    .await
}

pub async fn get(node: &TestNode, key: &str) -> Reply {
    request(node, Method::GET, &format!("/kv/{key}"), &[], "").await
}

pub async fn admin_purge(node: &TestNode, body: &str) -> Reply {
    send(
        Method::POST,
        &node.admin_url("/purge"),
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

/// A self-signed certificate for `name` (a host name, or an IP address as an IP
/// SAN), written as `{file}.pem` and `{file}-key.pem` in `dir`; also returns it in
/// DER form for clients to trust.
pub fn self_signed_certificate(
    dir: &Path,
    file: &str,
    name: &str,
) -> (PathBuf, PathBuf, rustls::pki_types::CertificateDer<'static>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}-key.pem")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.der().clone())
}

/// Polls `probe` every `every` until it answers `Ok`, for at most `limit`: returns
/// the value and how long it took, or panics naming `what` and the last `Err` (what
/// was seen instead). The one shape of every "wait until the cluster, the node or a
/// client shows X" in these tests.
pub async fn eventually<T, E: std::fmt::Debug, Fut>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut probe: impl FnMut() -> Fut,
) -> (T, Duration)
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    loop {
        let seen = match probe().await {
            Ok(value) => return (value, start.elapsed()),
            Err(seen) => seen,
        };
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; saw {seen:?}"
        );
        tokio::time::sleep(every).await;
    }
}
