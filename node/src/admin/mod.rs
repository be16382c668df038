//! The admin listener: `POST /purge`, `GET /purge/{id}`, `GET /cluster`,
//! `GET /metrics`, the near caches' `GET /invalidations` stream and its acks, the
//! status page ([`status`]), `POST /drain` (all behind the admin token), and the unauthenticated
//! probes `GET /healthz` and `GET /readyz`.

pub mod status;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fanz_protocol::CacheKey;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde::Deserialize;

use crate::auth::{Auth, Scope};
use crate::cache::Cache;
use crate::cluster::replication::Wait;
use crate::cluster::Cluster;
use crate::front::purge::Purger;
use crate::http::headers::validate_tag;
use crate::http::{full, json, read_body, text, Body, ReqBody};
use crate::invalidation::PurgeTargets;
use crate::metrics::{set_gauge, Metrics, TierLabel, TierLabels};
use crate::proxy::key::{all_objects, host_prefixes, url_key, url_prefix};
use crate::proxy::Proxy;

/// Largest purge request body.
const MAX_PURGE_BODY: u64 = 1 << 20;
/// Most ids one purge request may name.
const MAX_PURGE_IDS: usize = 10_000;
const PURGE_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /purge` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    prefixes: Vec<String>,
    /// Absolute URLs of proxied responses (every variant of each).
    #[serde(default)]
    urls: Vec<String>,
    /// Hosts: every HTTP object of each, on either scheme.
    #[serde(default)]
    hosts: Vec<String>,
    /// Absolute URL prefixes: every HTTP object under each.
    #[serde(default)]
    url_prefixes: Vec<String>,
    /// Every HTTP object (alone: nothing else may be named with it).
    #[serde(default)]
    all: bool,
    #[serde(default)]
    soft: bool,
}

/// What `GET /cluster` tells clients about the node's KV API besides membership:
/// where it lives and the limits a client checks before sending.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KvFacts {
    /// Path prefix of the KV API.
    pub kv_prefix: String,
    /// Longest key accepted.
    pub max_key_size: usize,
    /// Largest value accepted.
    pub max_value_size: u64,
}

/// What the admin listener serves from.
#[derive(Debug)]
pub struct AdminParts {
    /// The tiers and the invalidation engine.
    pub cache: Arc<Cache>,
    /// The admin credential (shared with the main port's `PURGE`).
    pub auth: Auth,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// What `/readyz` reports.
    pub ready: Arc<AtomicBool>,
    /// The pull-through proxy, when origins are configured.
    pub proxy: Option<Arc<Proxy>>,
    /// The node's cluster (of one, when it is alone).
    pub cluster: Arc<Cluster>,
    /// Facts about the KV API for clients.
    pub kv: KvFacts,
    /// Makes purges (shared with the main port's `PURGE`).
    pub purger: Arc<Purger>,
}

/// The admin listener's service.
#[derive(Debug)]
pub struct AdminService {
    parts: AdminParts,
    started: std::time::Instant,
}

impl std::ops::Deref for AdminService {
    type Target = AdminParts;
    fn deref(&self) -> &AdminParts {
        &self.parts
    }
}

impl AdminService {
    /// Builds the service.
    pub fn new(parts: AdminParts) -> Self {
        Self {
            parts,
            started: std::time::Instant::now(),
        }
    }

    /// The cluster as this node sees it, or a lone node as a cluster of one, with
    /// the KV facts a client needs.
    fn cluster_report(&self) -> serde_json::Value {
        let mut report = self.cluster.report();
        if let (Some(report), Ok(serde_json::Value::Object(facts))) =
            (report.as_object_mut(), serde_json::to_value(&self.kv))
        {
            report.extend(facts);
        }
        report
    }

    /// Answers one request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<ReqBody>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        // Health checks come from load balancers and kubelets wherever they are.
        if !matches!(path.as_str(), "/healthz" | "/readyz") {
            if let Err(denied) = self.auth.check_address(peer) {
                return denied.response;
            }
        }
        match (path.as_str(), method) {
            ("/healthz", Method::GET | Method::HEAD) => text(StatusCode::OK, "ok"),
            // Browsers ask for it beside the status page; there is none.
            ("/favicon.ico", Method::GET) => text(StatusCode::NO_CONTENT, ""),
            ("/readyz", Method::GET | Method::HEAD) => {
                if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "ready")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: starting or shutting down",
                    )
                }
            }
            ("/metrics", Method::GET) => {
                if let Some(refusal) = self.refusal(req.headers(), peer, Scope::Admin) {
                    return refusal;
                }
                self.refresh_gauges();
                let mut r = Response::new(full(self.metrics.encode()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            ("/purge", Method::POST) => {
                if let Some(refusal) = self.refusal(req.headers(), peer, Scope::Purge) {
                    return refusal;
                }
                self.purge(req).await
            }
            (p, Method::GET) if p.starts_with("/purge/") => {
                if let Some(refusal) = self.refusal(req.headers(), peer, Scope::Purge) {
                    return refusal;
                }
                let id = &p["/purge/".len()..];
                match self.cluster.replicator().report(id) {
                    Some(report) => json(
                        StatusCode::OK,
                        &serde_json::to_value(report).unwrap_or_default(),
                    ),
                    None => text(
                        StatusCode::NOT_FOUND,
                        format!("no purge {id:?} is known here (ids are kept by the node that made the purge)"),
                    ),
                }
            }
            ("/drain", Method::POST) => {
                if let Some(refusal) = self.refusal(req.headers(), peer, Scope::Admin) {
                    return refusal;
                }
                self.drain().await
            }
            ("/cluster", Method::GET) => {
                if let Some(refusal) = self.refusal(req.headers(), peer, Scope::Admin) {
                    return refusal;
                }
                json(StatusCode::OK, &self.cluster_report())
            }
            ("/invalidations", Method::GET) => {
                if let Some(refusal) = self.refusal(req.headers(), peer, Scope::Admin) {
                    return refusal;
                }
                self.watch()
            }
            (p, Method::POST) if p.starts_with("/invalidations/") && p.ends_with("/ack") => {
                if let Some(refusal) = self.refusal(req.headers(), peer, Scope::Admin) {
                    return refusal;
                }
                let id = p["/invalidations/".len()..p.len() - "/ack".len()].parse::<u64>();
                let seq = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("seq="))
                    .and_then(|s| s.parse::<u64>().ok());
                match (id, seq) {
                    (Ok(id), Some(seq)) => {
                        if self.cache.invalidator().watchers().ack(id, seq) {
                            text(StatusCode::NO_CONTENT, "")
                        } else {
                            text(StatusCode::GONE, format!("no watcher {id}: dropped or never subscribed; empty the near cache and subscribe again"))
                        }
                    }
                    _ => text(
                        StatusCode::BAD_REQUEST,
                        "expected POST /invalidations/{id}/ack?seq=N",
                    ),
                }
            }
            (p, Method::GET) if status::PATHS.contains(&p) => {
                if let Some(refusal) = self.refusal(req.headers(), peer, Scope::Admin) {
                    return refusal;
                }
                self.status_resource(p)
            }
            ("/healthz" | "/readyz" | "/metrics" | "/purge" | "/cluster" | "/invalidations" | "/drain", m) => text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{m} is not allowed on {path}"),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "no such admin resource (try / for the status page, /purge, /cluster, /invalidations, /metrics, /healthz, /readyz)",
            ),
        }
    }

    /// The refusal, if the request may not do what `scope` covers.
    fn refusal(
        &self,
        headers: &http::HeaderMap,
        peer: SocketAddr,
        scope: Scope,
    ) -> Option<Response<Body>> {
        // The address was checked for every request on the way in (`handle`).
        self.auth
            .check_credentials(headers, peer, scope)
            .err()
            .map(|denied| denied.response)
    }

    /// `POST /drain`, a Kubernetes `preStop` hook's first step: readiness goes
    /// false so load balancers stop sending here, and the node leaves the cluster so
    /// the others take over its keys, while it goes on serving whatever still
    /// arrives. SIGTERM then finishes what is in flight and stops the node.
    async fn drain(&self) -> Response<Body> {
        let was_ready = self.ready.swap(false, Ordering::AcqRel);
        self.cluster.leave().await;
        tracing::info!(
            was_ready,
            "draining: not ready, left the cluster; waiting for SIGTERM"
        );
        json(
            StatusCode::OK,
            &serde_json::json!({
                "draining": true,
                "left_cluster": !self.cluster.is_alone(),
            }),
        )
    }

    /// A near cache's stream of this node's invalidations (see
    /// `invalidation::Watchers`): newline-delimited JSON until the node drops it.
    fn watch(&self) -> Response<Body> {
        let (_, lines) = self.cache.invalidator().watchers().subscribe();
        let mut r = Response::new(crate::http::channel_body(lines));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    async fn purge(&self, req: Request<ReqBody>) -> Response<Body> {
        let wait = match req.uri().query().unwrap_or("") {
            "" | "wait=all" => Wait::All,
            "wait=none" => Wait::None,
            other => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown purge option {other:?}: use wait=all (the default) or wait=none"
                    ),
                )
            }
        };
        let body = match read_body(req.into_body(), MAX_PURGE_BODY, PURGE_BODY_TIMEOUT).await {
            Ok(b) => b,
            Err(e) => return e.response(),
        };
        let request: PurgeRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("invalid purge request: {e}"),
                )
            }
        };
        match self.targets(request) {
            Ok(targets) => self.purger.run(&targets, wait, "admin").await,
            Err(reason) => text(
                StatusCode::BAD_REQUEST,
                format!("invalid purge request: {reason}"),
            ),
        }
    }

    fn targets(&self, request: PurgeRequest) -> Result<PurgeTargets, String> {
        let count = request.keys.len()
            + request.tags.len()
            + request.prefixes.len()
            + request.urls.len()
            + request.hosts.len()
            + request.url_prefixes.len();
        if request.all && count > 0 {
            return Err(
                "`all` purges every HTTP object: name nothing else with it (send two purges)"
                    .into(),
            );
        }
        if count == 0 && !request.all {
            return Err(
                "name at least one key, tag, prefix, URL, host or URL prefix, or `all`".into(),
            );
        }
        if count > MAX_PURGE_IDS {
            return Err(format!("{count} ids; at most {MAX_PURGE_IDS} per request"));
        }
        let key = |k: &String| {
            if k.is_empty() || k.len() > self.kv.max_key_size {
                Err(format!(
                    "key {k:?} is empty or longer than {} bytes",
                    self.kv.max_key_size
                ))
            } else {
                Ok(CacheKey::kv(k.as_bytes()))
            }
        };
        let mut keys: Vec<CacheKey> = request.keys.iter().map(key).collect::<Result<_, _>>()?;
        for url in &request.urls {
            let key = match &self.proxy {
                Some(proxy) => proxy.url_key(url),
                None => url_key(url),
            };
            keys.push(key.map_err(|reason| format!("url {url:?}: {reason}"))?);
        }
        let mut http_prefixes = Vec::new();
        for host in &request.hosts {
            http_prefixes.extend(host_prefixes(host)?);
        }
        for prefix in &request.url_prefixes {
            http_prefixes.push(url_prefix(prefix)?);
        }
        if request.all {
            http_prefixes.push(all_objects());
        }
        Ok(PurgeTargets {
            keys,
            tags: request
                .tags
                .iter()
                .map(|t| validate_tag(t).map(|()| Bytes::copy_from_slice(t.as_bytes())))
                .collect::<Result<_, _>>()?,
            // An empty prefix would purge every key: allowed, it is what "purge all" is.
            prefixes: request
                .prefixes
                .iter()
                .map(|p| {
                    if p.len() > self.kv.max_key_size {
                        Err(format!("prefix longer than {} bytes", self.kv.max_key_size))
                    } else {
                        Ok(CacheKey::kv(p.as_bytes()))
                    }
                })
                .chain(http_prefixes.into_iter().map(Ok))
                .collect::<Result<_, String>>()?,
            soft: request.soft,
        })
    }

    fn refresh_gauges(&self) {
        let m = &self.metrics;
        let store = self.cache.store();
        let (written, read) = store.disk_io();
        set_gauge(
            &m.tier_bytes.get_or_create(&TierLabels {
                tier: TierLabel::Memory,
            }),
            store.memory_usage(),
        );
        set_gauge(
            &m.tier_bytes.get_or_create(&TierLabels {
                tier: TierLabel::Disk,
            }),
            written,
        );
        set_gauge(&m.disk_read_bytes, read);
        set_gauge(
            &m.tier_capacity_bytes.get_or_create(&TierLabels {
                tier: TierLabel::Memory,
            }),
            store.config().memory_capacity,
        );
        set_gauge(
            &m.tier_capacity_bytes.get_or_create(&TierLabels {
                tier: TierLabel::Disk,
            }),
            store.config().disk_capacity,
        );
        let inv = self.cache.invalidator();
        set_gauge(&m.tombstones, inv.tombstone_count() as u64);
        set_gauge(&m.dependency_edges, inv.edge_count() as u64);
        if let Some(proxy) = &self.proxy {
            set_gauge(&m.breakers_open, proxy.breakers_open() as u64);
        }
        let log = inv.log_stats();
        set_gauge(&m.log_bytes, log.bytes.load(Ordering::Relaxed));
        set_gauge(&m.log_fsyncs, log.fsyncs.load(Ordering::Relaxed));
    }
}
