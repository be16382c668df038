//! [`ClientBuilder`]: a client's settings (seeds, token, timeouts, retries, pool,
//! breaker, TLS, near cache), from code or the environment, and `build`, which
//! learns the cluster and starts the client's background tasks.

use crate::breaker::Breakers;
use crate::error::{Error, Result};
use crate::near::NearCache;
use crate::options::RetryPolicy;
use crate::pool::Pool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

use super::*;

/// Configures and connects a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(super) seeds: Vec<String>,
    pub(super) token: Option<String>,
    pub(super) connect_timeout: Duration,
    pub(super) timeout: Duration,
    pub(super) purge_timeout: Duration,
    pub(super) retry: RetryPolicy,
    pub(super) pool_size: usize,
    pub(super) refresh_interval: Duration,
    pub(super) breaker_threshold: u32,
    pub(super) breaker_cool_down: Duration,
    pub(super) near_cache: Option<(usize, Duration)>,
    pub(super) tls_ca: Option<std::path::PathBuf>,
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
pub(super) fn tls_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>> {
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
