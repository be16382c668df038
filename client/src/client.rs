//! The client: a builder ([`ClientBuilder`], in `builder`), the cluster view it keeps
//! fresh and the attempt loop (`transport`), and here the operations. Each operation
//! goes to the key's owner over a pooled HTTP/1.1 connection, and fails over to the
//! other owners, then to any member (which forwards to the owners).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use tokio::sync::{watch, Notify};
use tracing::Instrument;

use crate::breaker::Breakers;
use crate::error::{Error, Result};
use crate::near::NearCache;
use crate::options::{write_headers, Purge, PurgeReport, SetOptions, Value};
use crate::pool::Pool;
use crate::topology::{Member, Topology};

mod builder;
mod transport;

pub use builder::ClientBuilder;
use transport::{header_str, status_error};

/// Answers larger than the value limit by this much are cut off as malformed.
const ANSWER_SLACK: u64 = 64 * 1024;

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
        if purge.is_empty() {
            return Err(Error::Invalid("a purge must name something".into()));
        }
        let body = serde_json::json!({
            "keys": purge.keys,
            "tags": purge.tags,
            "prefixes": purge.prefixes,
            "urls": purge.urls,
            "hosts": purge.hosts,
            "url_prefixes": purge.url_prefixes,
            "all": purge.all,
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
