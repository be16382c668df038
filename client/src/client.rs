//! The client: a builder, the cluster view it keeps fresh, and the operations. Each
//! operation goes to the key's owner over a pooled HTTP/1.1 connection, and fails
//! over to the other owners, then to any member (which forwards to the owners).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::{watch, Notify};
use tracing::Instrument;

use crate::breaker::Breakers;
use crate::error::{Error, Result};
use crate::near::NearCache;
use crate::options::{jitter, write_headers, Purge, PurgeReport, RetryPolicy, SetOptions, Value};
use crate::pool::{exchange, Pool};
use crate::topology::{ClusterReport, Member, Topology};

/// Answers larger than the value limit by this much are cut off as malformed.
const ANSWER_SLACK: u64 = 64 * 1024;

/// Configures and connects a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    seeds: Vec<String>,
    token: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
    purge_timeout: Duration,
    retry: RetryPolicy,
    pool_size: usize,
    refresh_interval: Duration,
    breaker_threshold: u32,
    breaker_cool_down: Duration,
    near_cache: Option<(usize, Duration)>,
    tls_ca: Option<std::path::PathBuf>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            seeds: Vec::new(),
            token: None,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            purge_timeout: Duration::from_secs(15),
            retry: RetryPolicy::default(),
            pool_size: 32,
            refresh_interval: Duration::from_secs(5),
            breaker_threshold: 3,
            breaker_cool_down: Duration::from_secs(2),
            near_cache: None,
            tls_ca: None,
        }
    }
}

impl ClientBuilder {
    /// A builder configured from the environment, as `fanzctl` is: seeds from
    /// `FANZ_ENDPOINT` (comma-separated admin API addresses; default
    /// `http://127.0.0.1:9090`, the node's built-in admin address) and the token from
    /// `FANZ_ADMIN_TOKEN`, if set.
    pub fn from_env() -> Self {
        let endpoints =
            std::env::var("FANZ_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9090".to_string());
        let builder = Self::default().seeds(
            endpoints
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
        match std::env::var("FANZ_ADMIN_TOKEN") {
            Ok(token) if !token.is_empty() => builder.token(token),
            _ => builder,
        }
    }

    /// Admin API addresses of some nodes (`http://10.0.0.1:9091` or `10.0.0.1:9091`):
    /// the client learns the whole cluster from the first that answers.
    pub fn seeds<S: Into<String>>(mut self, seeds: impl IntoIterator<Item = S>) -> Self {
        self.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    /// The nodes' admin token (membership and purges need it when one is set).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Time to connect to a node, and to learn the cluster at start-up.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time each attempt of an operation may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Limit of one purge attempt that waits for every member (default 15 s, and
    /// never below [`Self::timeout`]). A node answers such a purge within its
    /// `purge_ack_timeout` (5 s by default); while a member is being declared down
    /// or restarted, completing a purge takes a sync lease longer.
    pub fn purge_timeout(mut self, timeout: Duration) -> Self {
        self.purge_timeout = timeout;
        self
    }

    /// Retries of idempotent operations (all KV operations and purges are).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Idle connections kept per node.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How often the membership is refreshed (also refreshed after a node fails).
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Failures in a row that open a node's circuit, and how long it stays open.
    pub fn circuit_breaker(mut self, threshold: u32, cool_down: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cool_down = cool_down;
        self
    }

    /// Speaks TLS to the nodes' KV API (their `tls_cert`), trusting only the
    /// certificates in the PEM file `ca` (a CA, or the nodes' own certificates).
    /// The seeds' admin API stays plain HTTP, as the nodes serve it.
    pub fn tls_ca_file(mut self, ca: impl Into<std::path::PathBuf>) -> Self {
        self.tls_ca = Some(ca.into());
        self
    }

    /// Keeps up to `capacity` recently read values in process, each at most
    /// `max_ttl` (and never beyond its own freshness). The seed it watches pushes
    /// every invalidation to it, and a purge acknowledged with `wait=all` has emptied
    /// it of what the purge covered. Off by default. Needs the admin token when the
    /// nodes have one.
    pub fn near_cache(mut self, capacity: usize, max_ttl: Duration) -> Self {
        self.near_cache = Some((capacity, max_ttl));
        self
    }

    /// Learns the cluster from the seeds and starts keeping it fresh. Fails with
    /// [`Error::Unreachable`] or [`Error::Timeout`] when no seed answers within the
    /// connect timeout, [`Error::Auth`] when the token is refused.
    pub async fn build(self) -> Result<Client> {
        if self.seeds.is_empty() {
            return Err(Error::Config("no seeds given".into()));
        }
        let seeds = self
            .seeds
            .iter()
            .map(|s| {
                let base = if s.contains("://") {
                    s.clone()
                } else {
                    format!("http://{s}")
                };
                let uri: http::Uri = base
                    .parse()
                    .map_err(|e| Error::Config(format!("seed {s:?} is not an address: {e}")))?;
                match (uri.scheme_str(), uri.authority()) {
                    (Some("http"), Some(a)) => Ok(a.to_string()),
                    _ => Err(Error::Config(format!(
                        "seed {s:?}: only http://host:port is supported"
                    ))),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let tls = match &self.tls_ca {
            Some(ca) => Some(tls_config(ca)?),
            None => None,
        };
        let inner = Inner {
            pool: Pool::new(self.pool_size, self.connect_timeout, tls),
            seeds,
            token: self.token.clone(),
            settings: self.clone(),
            topology: RwLock::new(None),
            max_answer: std::sync::atomic::AtomicU64::new(u64::MAX / 2),
            max_key: std::sync::atomic::AtomicUsize::new(usize::MAX),
            refresh: Arc::new(Notify::new()),
            breakers: Breakers::new(self.breaker_threshold, self.breaker_cool_down),
            flights: Mutex::new(HashMap::new()),
            near: self
                .near_cache
                .map(|(capacity, ttl)| Arc::new(NearCache::new(capacity, ttl))),
        };
        let inner = Arc::new(inner);
        let first = tokio::time::timeout(self.connect_timeout, inner.learn())
            .await
            .map_err(|_| Error::Timeout(self.connect_timeout))??;
        inner.install(Arc::new(first));
        tokio::spawn(keep_fresh(
            Arc::downgrade(&inner),
            inner.refresh.clone(),
            self.refresh_interval,
        ));
        if let Some(near) = &inner.near {
            tokio::spawn(crate::near::watch(Arc::downgrade(&inner), near.clone()));
        }
        Ok(Client { inner })
    }
}

/// A rustls client configuration trusting the certificates in the PEM file `ca`
/// (ring provider, passed explicitly: no process-wide default is assumed).
fn tls_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let bad =
        |e: &dyn std::fmt::Display| Error::Config(format!("TLS CA file {}: {e}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in it"));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(&e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A FANZ Edge client. Cheap to clone; clones share connections and state.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

type Flight = watch::Receiver<Option<Result<Bytes>>>;

pub(crate) struct Inner {
    pool: Pool,
    /// Admin `host:port` of each seed.
    seeds: Vec<String>,
    token: Option<String>,
    settings: ClientBuilder,
    topology: RwLock<Option<Arc<Topology>>>,
    /// Largest answer body accepted: the nodes' value limit and some slack.
    max_answer: std::sync::atomic::AtomicU64,
    /// The nodes' key limit (read on every operation, so kept out of the lock).
    max_key: std::sync::atomic::AtomicUsize,
    refresh: Arc<Notify>,
    breakers: Breakers,
    /// `get_or_set` calls in progress, by key: later callers wait for the first.
    flights: Mutex<HashMap<Vec<u8>, Flight>>,
    near: Option<Arc<NearCache>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seeds", &self.seeds)
            .finish()
    }
}

/// Refreshes the membership every `interval`, or at once when an operation saw a
/// node fail; ends when the client is dropped.
async fn keep_fresh(inner: Weak<Inner>, refresh: Arc<Notify>, interval: Duration) {
    loop {
        if inner.strong_count() == 0 {
            return;
        }
        tokio::select! {
            () = refresh.notified() => {}
            () = tokio::time::sleep(interval) => {}
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        match tokio::time::timeout(strong.settings.timeout, strong.learn()).await {
            Ok(Ok(topology)) => {
                strong.install(Arc::new(topology));
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "membership refresh failed; keeping the last view")
            }
            Err(_) => tracing::debug!("membership refresh timed out; keeping the last view"),
        }
        drop(strong);
        // At most one refresh per 100 ms, however many failures ask for one.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which of a node's listeners a request is for: the KV API speaks TLS when the
/// client is configured for it; the admin API is plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Kv,
    Admin,
}

/// A node's answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Inner {
    pub(crate) fn seeds(&self) -> &[String] {
        &self.seeds
    }

    /// Opens a near-cache watch on `seed` (its own connection: the stream lasts).
    pub(crate) async fn open_watch(&self, seed: &str) -> Result<hyper::body::Incoming> {
        let mut request = Request::get("/invalidations").header(http::header::HOST, seed);
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut sender = self.pool.connect_plain(seed).await?;
        let response = tokio::time::timeout(self.settings.timeout, exchange(&mut sender, request))
            .await
            .map_err(|_| Error::Timeout(self.settings.timeout))?
            .map_err(|e| Error::Unreachable(format!("{seed}: {e}")))?;
        if response.status() != StatusCode::OK {
            return Err(Error::Server {
                node: seed.to_string(),
                status: response.status().as_u16(),
                message: "the invalidation watch was refused".into(),
            });
        }
        Ok(response.into_body())
    }

    /// Confirms to `seed` that watcher `id` applied every invalidation up to `seq`.
    pub(crate) async fn confirm(&self, seed: &str, id: u64, seq: u64) -> Result<()> {
        let path = format!("/invalidations/{id}/ack?seq={seq}");
        let answer = self.admin_at(seed, Method::POST, &path, None).await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(status_error(seed, &answer))
        }
    }

    fn install(&self, topology: Arc<Topology>) {
        self.max_answer.store(
            topology.report.max_value_size.saturating_add(ANSWER_SLACK),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.max_key.store(
            topology.report.max_key_size,
            std::sync::atomic::Ordering::Relaxed,
        );
        *self.topology.write().expect("topology lock") = Some(topology);
    }

    fn topology(&self) -> Arc<Topology> {
        self.topology
            .read()
            .expect("topology lock")
            .clone()
            .expect("learned before the client is handed out")
    }

    /// The cluster from the first seed that answers.
    async fn learn(&self) -> Result<Topology> {
        let mut last = Error::Unreachable("no seed answered".into());
        for seed in &self.seeds {
            match self.admin_at(seed, Method::GET, "/cluster", None).await {
                Ok(answer) if answer.status == StatusCode::OK => {
                    let report: ClusterReport =
                        serde_json::from_slice(&answer.body).map_err(|e| Error::Protocol {
                            node: seed.clone(),
                            message: format!("unreadable cluster report: {e}"),
                        })?;
                    return Topology::new(report);
                }
                Ok(answer) => last = status_error(seed, &answer),
                Err(e) => last = e,
            }
            if matches!(last, Error::Auth(_)) {
                return Err(last);
            }
        }
        Err(last)
    }

    /// One HTTP exchange with `node`'s KV API within the operation timeout.
    async fn send(
        &self,
        node: &str,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Answer> {
        self.send_to(
            Port::Kv,
            node,
            method,
            path,
            headers,
            body,
            self.settings.timeout,
        )
        .await
    }

    /// One HTTP exchange with `node` on `port` within the operation timeout.
    #[allow(clippy::too_many_arguments)]
    async fn send_to(
        &self,
        port: Port,
        node: &str,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer> {
        let limit = self.max_answer.load(std::sync::atomic::Ordering::Relaxed);
        let attempt = async {
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, node);
            for (name, value) in headers {
                request = request.header(*name, value.as_str());
            }
            let request = request
                .body(Full::new(body))
                .map_err(|e| Error::Invalid(format!("request: {e}")))?;
            let mut sender = self.pool.take(node, port == Port::Kv).await?;
            let response = exchange(&mut sender, request)
                .await
                .map_err(|e| Error::Unreachable(format!("{node}: {e}")))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit as usize)
                .collect()
                .await
                .map_err(|e| Error::Protocol {
                    node: node.to_string(),
                    message: format!("answer body: {e}"),
                })?
                .to_bytes();
            // The whole answer was read: the connection can carry the next one.
            self.pool.give_back(node, sender);
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }

    async fn admin_at(
        &self,
        seed: &str,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answer> {
        self.admin_within(seed, method, path, body, self.settings.timeout)
            .await
    }

    /// [`Self::admin_at`] with its own time limit (purges that wait for members).
    async fn admin_within(
        &self,
        seed: &str,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Answer> {
        let mut headers = Vec::new();
        if let Some(token) = &self.token {
            headers.push(("authorization", format!("Bearer {token}")));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json".to_string()));
        }
        self.send_to(
            Port::Admin,
            seed,
            method,
            path,
            &headers,
            body.unwrap_or_default(),
            timeout,
        )
        .await
    }

    /// Runs `attempt` against the best node for `key`, failing over to the next
    /// candidates with backoff while the error is retryable.
    async fn run<T, F, Fut>(&self, key: &[u8], attempt: F) -> Result<T>
    where
        F: Fn(String, Arc<Topology>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut tried: Vec<String> = Vec::new();
        let attempt = &attempt;
        self.retrying(Error::Unreachable("no member to ask".into()), |number| {
            let topology = self.topology();
            let node = self.next_candidate(&topology, key, &mut tried, number)?;
            let sent = attempt(node.clone(), topology);
            Some(async move {
                let result = sent.await;
                match &result {
                    Ok(_) => self.breakers.success(&node),
                    Err(e) if e.is_retryable() => {
                        tracing::debug!(%node, error = %e, attempt = number, "attempt failed; failing over");
                        self.breakers.failure(&node);
                        self.refresh.notify_one();
                    }
                    Err(_) => {}
                }
                result
            })
        })
        .await
    }

    /// The node for attempt `number` on `key`: the best candidate not tried yet
    /// (owners first, then the others), whatever breakers opened meanwhile; once
    /// every one was tried, round again. When every breaker is open, it asks anyway
    /// rather than fail without trying. `None` when there is no member to ask.
    fn next_candidate(
        &self,
        topology: &Topology,
        key: &[u8],
        tried: &mut Vec<String>,
        number: u32,
    ) -> Option<String> {
        let all = topology.candidates(key);
        let allowed: Vec<&Member> = all
            .iter()
            .copied()
            .filter(|m| self.breakers.allows(&m.http))
            .collect();
        let pool = if allowed.is_empty() { all } else { allowed };
        let node = pool
            .iter()
            .find(|m| !tried.contains(&m.http))
            .or_else(|| pool.get((number - 1) as usize % pool.len().max(1)))?
            .http
            .clone();
        tried.push(node.clone());
        Some(node)
    }

    /// Runs the attempts `attempt` makes (given their number, from 1) until one
    /// succeeds, one fails with an error retrying cannot help, the retry policy's
    /// attempts run out (backing off between them), or `attempt` has nothing to try
    /// (`None`); then the last error, or `nothing` if none was made.
    async fn retrying<T, Fut>(
        &self,
        nothing: Error,
        mut attempt: impl FnMut(u32) -> Option<Fut>,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let policy = self.settings.retry;
        let mut last = nothing;
        for number in 1..=policy.max_attempts.max(1) {
            let Some(sent) = attempt(number) else {
                return Err(last);
            };
            match sent.await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_retryable() => last = e,
                Err(e) => return Err(e),
            }
            if number < policy.max_attempts {
                tokio::time::sleep(policy.backoff(number, jitter())).await;
            }
        }
        Err(last)
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        let limit = self.max_key.load(std::sync::atomic::Ordering::Relaxed);
        if key.is_empty() {
            return Err(Error::Invalid("empty key".into()));
        }
        if key.len() > limit {
            return Err(Error::TooLarge {
                what: "key",
                size: key.len(),
                limit,
            });
        }
        Ok(())
    }
}

/// The typed error for a non-success answer.
fn status_error(node: &str, answer: &Answer) -> Error {
    if let Some(incomplete) = incomplete_purge(node, answer) {
        return incomplete;
    }
    let message = String::from_utf8_lossy(&answer.body).trim().to_string();
    match answer.status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Auth(message),
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::URI_TOO_LONG => Error::Invalid(message),
        status => Error::Server {
            node: node.to_string(),
            status: status.as_u16(),
            message,
        },
    }
}

/// A node's 504 for a purge (or delete) that waited for every member and timed out
/// first: [`Error::PurgeIncomplete`] with the members that had not applied it.
fn incomplete_purge(node: &str, answer: &Answer) -> Option<Error> {
    if answer.status != StatusCode::GATEWAY_TIMEOUT {
        return None;
    }
    let report: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    if report["status"] != "incomplete" {
        return None;
    }
    let cluster = &report["cluster"];
    Some(Error::PurgeIncomplete {
        node: node.to_string(),
        purge_id: cluster["id"].as_str().map(str::to_string),
        pending: crate::options::pending_members(cluster),
    })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Client {
    /// A builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    fn path(&self, topology: &Topology, key: &[u8]) -> String {
        format!(
            "{}{}",
            topology.report.kv_prefix,
            fanz_protocol::percent::encode(key)
        )
    }

    /// The value under `key`, or `None`.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        Ok(self.get_with_meta(key).await?.map(|v| v.value))
    }

    /// The value under `key` with its age, tags and version, or `None`.
    pub async fn get_with_meta(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        let key = key.as_ref();
        self.inner.check_key(key)?;
        let near = self.inner.near.as_ref();
        if let Some(value) = near.and_then(|n| n.get(key)) {
            return Ok(Some(value));
        }
        let generation = near.map(|n| n.generation());
        let span = tracing::debug_span!("fanz.get", key = %String::from_utf8_lossy(key));
        let found = self
            .inner
            .run(key, |node, topology| {
                let path = self.path(&topology, key);
                async move {
                    let answer = self
                        .inner
                        .send(&node, Method::GET, &path, &[], Bytes::new())
                        .await?;
                    match answer.status {
                        StatusCode::OK => Ok(Some(value_from(&node, answer)?)),
                        StatusCode::NOT_FOUND => Ok(None),
                        _ => Err(status_error(&node, &answer)),
                    }
                }
            })
            .instrument(span)
            .await?;
        if let (Some(near), Some(generation), Some(value)) = (near, generation, &found) {
            near.keep(key, value, generation);
        }
        Ok(found)
    }

    /// The value under `key` decoded from JSON, or `None`. A value that is not
    /// valid JSON for `T` is an [`Error::Invalid`].
    #[cfg(feature = "serde")]
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<T>> {
        match self.get(key).await? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Invalid(format!("stored value is not the JSON expected: {e}"))),
            None => Ok(None),
        }
    }

    /// Stores `value` as JSON (content type `application/json`).
    #[cfg(feature = "serde")]
    pub async fn set_json<T: serde::Serialize>(
        &self,
        key: impl AsRef<[u8]>,
        value: &T,
        options: &SetOptions,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::Invalid(format!("value does not serialise: {e}")))?;
        let mut options = options.clone();
        options
            .content_type
            .get_or_insert_with(|| "application/json".to_string());
        self.set(key, bytes, &options).await
    }

    /// Values held by the near cache (0 without one).
    pub fn near_cache_len(&self) -> usize {
        self.inner.near.as_ref().map_or(0, |n| n.len())
    }

    /// Stores `value` under `key` on its owners. Overwriting is invalidation: every
    /// value that depends on `key` is invalidated across the cluster.
    pub async fn set(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
        options: &SetOptions,
    ) -> Result<()> {
        let (key, value) = (key.as_ref(), value.into());
        self.inner.check_key(key)?;
        let limit = self.inner.topology().report.max_value_size;
        if value.len() as u64 > limit {
            return Err(Error::TooLarge {
                what: "value",
                size: value.len(),
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            });
        }
        let headers = write_headers(options)?;
        let span = tracing::debug_span!("fanz.set", key = %String::from_utf8_lossy(key), bytes = value.len());
        self.inner
            .run(key, |node, topology| {
                let path = self.path(&topology, key);
                let (headers, value) = (&headers, value.clone());
                async move {
                    let answer = self
                        .inner
                        .send(&node, Method::PUT, &path, headers, value)
                        .await?;
                    if answer.status.is_success() {
                        Ok(())
                    } else {
                        Err(status_error(&node, &answer))
                    }
                }
            })
            .instrument(span)
            .await?;
        self.forget(key);
        Ok(())
    }

    /// Drops `key` from the near cache, after this client wrote or deleted it.
    fn forget(&self, key: &[u8]) {
        if let Some(near) = &self.inner.near {
            near.forget(key);
        }
    }

    /// Deletes `key` everywhere: a purge of the key that every member acknowledged
    /// before this returns (in a cluster).
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let key = key.as_ref();
        self.inner.check_key(key)?;
        let span = tracing::debug_span!("fanz.delete", key = %String::from_utf8_lossy(key));
        self.inner
            .run(key, |node, topology| {
                let path = self.path(&topology, key);
                async move {
                    let answer = self
                        .inner
                        .send(&node, Method::DELETE, &path, &[], Bytes::new())
                        .await?;
                    if answer.status.is_success() {
                        Ok(())
                    } else {
                        Err(status_error(&node, &answer))
                    }
                }
            })
            .instrument(span)
            .await?;
        self.forget(key);
        Ok(())
    }

    /// Purges keys, tags and prefixes through a seed's admin API (needs the token
    /// when the nodes have one).
    pub async fn purge(&self, purge: &Purge) -> Result<PurgeReport> {
        for tag in &purge.tags {
            crate::options::check_tag(tag)?;
        }
        for key in purge.keys.iter().chain(&purge.prefixes) {
            self.inner.check_key(key.as_bytes())?;
        }
        let body = serde_json::json!({
            "keys": purge.keys,
            "tags": purge.tags,
            "prefixes": purge.prefixes,
            "soft": purge.soft,
        });
        let (path, limit) = if purge.wait {
            (
                "/purge?wait=all",
                self.inner
                    .settings
                    .purge_timeout
                    .max(self.inner.settings.timeout),
            )
        } else {
            ("/purge?wait=none", self.inner.settings.timeout)
        };
        let body = Bytes::from(body.to_string());
        let span = tracing::debug_span!(
            "fanz.purge",
            tags = purge.tags.len(),
            keys = purge.keys.len()
        );
        let inner = &self.inner;
        let purged = inner.retrying(Error::Unreachable("no seed answered".into()), |number| {
            let seed = inner.seeds[(number as usize - 1) % inner.seeds.len()].clone();
            let body = body.clone();
            Some(async move {
                let answer = inner
                    .admin_within(&seed, Method::POST, path, Some(body), limit)
                    .await?;
                if answer.status.is_success() {
                    Ok((seed, answer))
                } else {
                    Err(status_error(&seed, &answer))
                }
            })
        });
        async {
            // An unreadable report is not retried: the purge was made.
            let (seed, answer) = purged.await?;
            let raw: serde_json::Value =
                serde_json::from_slice(&answer.body).map_err(|e| Error::Protocol {
                    node: seed,
                    message: format!("unreadable purge report: {e}"),
                })?;
            Ok(PurgeReport {
                dependents_invalidated: raw["dependents_invalidated"].as_u64().unwrap_or(0),
                purge_id: raw["purge_id"].as_str().map(str::to_string),
                raw,
            })
        }
        .instrument(span)
        .await
    }

    /// Values of `keys`, in the same order, fetched concurrently.
    pub async fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Bytes>>> {
        let mut set = tokio::task::JoinSet::new();
        for (i, key) in keys.iter().enumerate() {
            let (client, key) = (self.clone(), key.as_ref().to_vec());
            set.spawn(async move { (i, client.get(key).await) });
        }
        let mut out = vec![None; keys.len()];
        while let Some(joined) = set.join_next().await {
            let (i, value) = joined.map_err(|e| Error::Invalid(format!("task failed: {e}")))?;
            out[i] = value?;
        }
        Ok(out)
    }

    /// Stores every pair concurrently; the first error is returned (the other
    /// writes may have happened).
    pub async fn set_many<K: AsRef<[u8]>>(
        &self,
        pairs: &[(K, Bytes)],
        options: &SetOptions,
    ) -> Result<()> {
        let mut set = tokio::task::JoinSet::new();
        for (key, value) in pairs {
            let (client, key, value, options) = (
                self.clone(),
                key.as_ref().to_vec(),
                value.clone(),
                options.clone(),
            );
            set.spawn(async move { client.set(key, value, &options).await });
        }
        let mut first = Ok(());
        while let Some(joined) = set.join_next().await {
            let result = joined
                .map_err(|e| Error::Invalid(format!("task failed: {e}")))
                .and_then(|r| r);
            if first.is_ok() {
                first = result;
            }
        }
        first
    }

    /// The value under `key`; when there is none, `producer`'s value, stored with
    /// `options`. Concurrent calls for the same key in this process share one
    /// lookup and one producer run (single flight).
    pub async fn get_or_set<F, Fut, E>(
        &self,
        key: impl AsRef<[u8]>,
        options: &SetOptions,
        producer: F,
    ) -> Result<Bytes>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let key = key.as_ref();
        let mut producer = Some(producer);
        loop {
            // Decided under the lock, acted on after it (it is not held across awaits).
            let role = {
                let mut flights = self.inner.flights.lock().expect("flight lock");
                match flights.get(key) {
                    Some(flight) => Err(flight.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        flights.insert(key.to_vec(), rx);
                        Ok(tx)
                    }
                }
            };
            match role {
                Ok(leader) => {
                    let _landing = Landing {
                        inner: &self.inner,
                        key,
                    };
                    let produce = producer.take().expect("a caller leads at most once");
                    let result = self.lead(key, options, produce).await;
                    leader.send_replace(Some(result.clone()));
                    return result;
                }
                Err(mut flight) => loop {
                    if let Some(result) = flight.borrow().clone() {
                        return result;
                    }
                    if flight.changed().await.is_err() {
                        // The leader was cancelled without an answer: lead or wait anew.
                        break;
                    }
                },
            }
        }
    }

    async fn lead<F, Fut, E>(&self, key: &[u8], options: &SetOptions, producer: F) -> Result<Bytes>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        if let Some(value) = self.get(key).await? {
            return Ok(value);
        }
        let value = producer()
            .await
            .map_err(|e| Error::Producer(e.to_string()))?;
        self.set(key, value.clone(), options).await?;
        Ok(value)
    }

    /// The members as the client last learned them (refreshed first).
    pub async fn members(&self) -> Result<Vec<Member>> {
        let topology = self.refresh().await?;
        Ok(topology.report.members.clone())
    }

    /// The owners of `key`, in ring order, as the client routes to them.
    pub fn owners(&self, key: impl AsRef<[u8]>) -> Vec<Member> {
        self.inner
            .topology()
            .owners(key.as_ref())
            .into_iter()
            .cloned()
            .collect()
    }

    /// GETs an admin resource (`/metrics`, `/healthz`, `/purge/{id}`...) from the
    /// first seed that answers it successfully.
    pub async fn admin_get(&self, path: &str) -> Result<Bytes> {
        let mut last = Error::Unreachable("no seed answered".into());
        for seed in &self.inner.seeds {
            match self.inner.admin_at(seed, Method::GET, path, None).await {
                Ok(answer) if answer.status.is_success() => return Ok(answer.body),
                Ok(answer) => last = status_error(seed, &answer),
                Err(e) => last = e,
            }
            if !last.is_retryable() {
                break;
            }
        }
        Err(last)
    }

    /// Drains the first seed's node (`POST /drain`): it turns not-ready and leaves
    /// the cluster, and keeps serving until it is stopped. Never fails over to
    /// another seed: draining is about one node.
    pub async fn drain(&self) -> Result<Bytes> {
        let seed = self
            .inner
            .seeds
            .first()
            .ok_or_else(|| Error::Config("no seed to drain".into()))?;
        let answer = self
            .inner
            .admin_at(seed, Method::POST, "/drain", None)
            .await?;
        if answer.status.is_success() {
            Ok(answer.body)
        } else {
            Err(status_error(seed, &answer))
        }
    }

    /// Learns the membership again now.
    pub async fn refresh(&self) -> Result<Arc<Topology>> {
        let topology = Arc::new(self.inner.learn().await?);
        self.inner.install(topology.clone());
        Ok(topology)
    }
}

/// Removes a `get_or_set` flight when its leader finishes or is cancelled.
struct Landing<'a> {
    inner: &'a Inner,
    key: &'a [u8],
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        if let Ok(mut flights) = self.inner.flights.lock() {
            flights.remove(self.key);
        }
    }
}

fn value_from(node: &str, answer: Answer) -> Result<Value> {
    let version = header_str(&answer.headers, "etag")
        .map(|e| e.trim_matches('"'))
        .and_then(|e| u64::from_str_radix(e, 16).ok())
        .ok_or_else(|| Error::Protocol {
            node: node.to_string(),
            message: "a value without a version (ETag)".into(),
        })?;
    let max_age = header_str(&answer.headers, "cache-control")
        .and_then(|cc| {
            cc.split(',')
                .find_map(|d| d.trim().strip_prefix("max-age="))
        })
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    let age = header_str(&answer.headers, "age")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    Ok(Value {
        age: Duration::from_secs(age),
        tags: header_str(&answer.headers, "surrogate-key")
            .map(|t| t.split_ascii_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        version,
        content_type: header_str(&answer.headers, "content-type").map(str::to_string),
        max_age,
        value: answer.body,
    })
}
