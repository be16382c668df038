//! The proxy's request flow. Phases, in order:
//!
//! ```text
//! route (Host -> origin, else 421)
//!   GET/HEAD: lookup (primary key; through a Vary marker to the variant)
//!     fresh ........................ hit
//!     stale, inside swr ............ hit (stale) + one background refresh
//!     stale otherwise .............. revalidate (conditional fetch; 304 refreshes; error -> stale-if-error)
//!     absent ....................... fetch (collapsed), store if RFC 9111 allows, stream to every waiter
//!   other methods: forward; on success invalidate the URL, Location and Content-Location
//! ```
//!
//! The phases that stand alone live beside it: `request` (one request's facts and
//! its own directives), `upstream` (owner or origin), `revalidate` (a 304 merged
//! into the stored response), `storing` and `unsafe_methods`. What stays here is the
//! decision flow of a GET or HEAD from lookup to answer, kept in one file so it
//! reads top to bottom.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use fanz_protocol::CacheKey;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};

use super::fill::{self, add_validators, CLIENT_CONDITIONALS, CLIENT_VALIDATORS, PARTIAL};
use super::flight::{Failure, Flights, Joined, Leader, Outcome, SharedHead};
use super::key::{marker_fields, variant_key, Target};
use super::origin::{OriginResponse, Origins};
use super::policy::{self, RequestFacts};
use super::respond::{origin_failure, stored_headers, Shaping};
use crate::cache::HitPolicy;
use crate::cache::{Cache, Found};
use crate::cluster::replication::Replicator;
use crate::cluster::routing::Routing;
use crate::config::Config;
use crate::config::TtlPolicy;
use crate::http::cache_status::{CacheStatus, Fwd};
use crate::http::{text, Answer, Body, ReqBody};
use crate::live::Live;
use crate::metrics::{LookupResult, Metrics};

mod request;
mod revalidate;
mod storing;
mod unsafe_methods;
mod upstream;

use request::{tell_peer_version, Conditionals, Ctx, RequestDirectives};

/// How often a request retries joining a flight whose leader went away.
const MAX_REJOINS: usize = 3;

/// The pull-through cache in front of the configured origins.
#[derive(Debug)]
pub struct Proxy {
    cache: Arc<Cache>,
    /// Whether clients reach this node over HTTPS (the scheme in cache keys).
    front_tls: bool,
    /// Replaced by a config reload; requests keep the origins they started with.
    origins: Live<Origins>,
    /// The client configuration for https origins (kept for reloads).
    tls: Arc<rustls::ClientConfig>,
    metrics: Arc<Metrics>,
    flights: Arc<Flights>,
    /// Keys that answered uncacheable, until when (ms): skip collapsing (hit-for-miss).
    uncacheable: DashMap<CacheKey, u64>,
    shaping: Shaping,
    max_object_size: u64,
    uncacheable_ttl_ms: AtomicU64,
    total_timeout: Duration,
    /// Owner routing (a cluster of one owns every key).
    routing: Arc<Routing>,
    /// Cluster-wide purges.
    replicator: Arc<Replicator>,
    /// Keys a non-owner has missed once recently: a second miss admits a hot copy.
    seen_once: DashMap<CacheKey, u64>,
    /// Lifetime clamps (shared with the KV API; reloadable within their start-up values).
    ttl: Arc<Live<TtlPolicy>>,
}

/// How long a first miss counts towards admitting a hot copy.
const ADMISSION_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Bound on remembered first misses; the map is cleared when it is exceeded.
const ADMISSION_MEMORY: usize = 100_000;

/// What a `PURGE` request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeTarget {
    /// One URL (every variant of it).
    Key(CacheKey),
    /// Every URL under a prefix (a path ending in `*`).
    Prefix(CacheKey),
}

impl Proxy {
    /// A proxy for the origins of `config`; `tls` is the client configuration for
    /// https origins. Misses go through their owners by `routing`, and unsafe
    /// requests purge through `replicator`.
    pub fn new(
        cache: Arc<Cache>,
        config: &Config,
        tls: &Arc<rustls::ClientConfig>,
        metrics: Arc<Metrics>,
        ttl: Arc<Live<TtlPolicy>>,
        routing: Arc<Routing>,
        replicator: Arc<Replicator>,
    ) -> Self {
        Self {
            cache,
            front_tls: config.tls_cert.is_some(),
            origins: Live::new(Origins::from_config(config, tls, &metrics)),
            tls: tls.clone(),
            metrics,
            flights: Arc::new(Flights::default()),
            uncacheable: DashMap::new(),
            shaping: Shaping {
                strip_tags: config.strip_tag_headers,
            },
            max_object_size: config.max_object_size,
            uncacheable_ttl_ms: AtomicU64::new(config.uncacheable_ttl.as_millis() as u64),
            total_timeout: config.origin_total_timeout,
            routing,
            replicator,
            seen_once: DashMap::new(),
            ttl,
        }
    }

    /// Takes the origins (and their client settings) and the hit-for-miss time of
    /// a reloaded `config`. Requests in flight finish with the origins they have;
    /// circuit breakers start closed.
    pub fn reload(&self, config: &Config) {
        self.origins
            .set(Origins::from_config(config, &self.tls, &self.metrics));
        self.uncacheable_ttl_ms
            .store(config.uncacheable_ttl.as_millis() as u64, Ordering::Relaxed);
    }

    /// The primary cache key of an absolute URL, as the operator's rules make it
    /// (what purging the URL must purge).
    pub fn url_key(&self, url: &str) -> Result<CacheKey, &'static str> {
        let mut target = crate::proxy::key::url_target(url)?;
        target.apply_rules(self.origins.get().rules());
        Ok(target.primary_key())
    }

    /// The headers the origin is asked with: the client's, less what must not be
    /// forwarded ([`Origins::forward_headers`]), edited by the operator's rule.
    fn origin_request_headers(&self, ctx: &Ctx) -> HeaderMap {
        let mut headers = self
            .origins
            .get()
            .forward_headers(&ctx.origin, &ctx.headers, ctx.client);
        if let Some(rule) = &ctx.rule {
            rule.request_edits.apply(&mut headers);
        }
        headers
    }

    /// What a `PURGE` of this request names: the key prefix of its wildcard path
    /// (`/img/*`), or its primary key.
    pub fn purge_target_of(&self, req: &http::request::Parts) -> Result<PurgeTarget, &'static str> {
        let mut target = Target::of(req, self.front_tls)?;
        if let Some(prefix) = target.wildcard_prefix() {
            return Ok(PurgeTarget::Prefix(prefix));
        }
        target.apply_rules(self.origins.get().rules());
        Ok(PurgeTarget::Key(target.primary_key()))
    }

    /// The operator's rules with the requests each matched (the status page).
    pub fn rules_report(&self) -> Vec<crate::config::rules::RuleReport> {
        self.origins.get().rules().report()
    }

    /// How many origins have their breaker open (for the metrics).
    pub fn breakers_open(&self) -> usize {
        self.origins.get().breakers_open()
    }

    /// Whether any origin is configured.
    pub fn enabled(&self) -> bool {
        self.origins.get().any()
    }

    /// Answers a request for the proxied URL space: at once for a hit the memory
    /// tier can answer (fresh, or stale inside `stale-while-revalidate`), and for a
    /// request refused outright; later for everything else.
    pub fn answer(self: &Arc<Self>, req: Request<ReqBody>, peer: SocketAddr) -> Answer {
        let (parts, body) = req.into_parts();
        let ctx = match self.context(parts, peer.ip(), false) {
            Ok(ctx) => ctx,
            Err(refusal) => return Answer::Now(*refusal),
        };
        // What the operator's rule does to the response clients get.
        let edits = ctx
            .rule
            .as_ref()
            .filter(|r| !r.response_edits.is_empty())
            .cloned();
        if matches!(ctx.method, Method::GET | Method::HEAD) && !ctx.bypass() {
            if let Some(mut response) = self.answer_from_memory(&ctx) {
                if let Some(rule) = &edits {
                    rule.response_edits.apply(response.headers_mut());
                }
                return Answer::Now(response);
            }
        }
        let this = self.clone();
        Answer::later(async move {
            let mut response = this.dispatch(ctx, body).await;
            if let Some(rule) = &edits {
                rule.response_edits.apply(response.headers_mut());
            }
            response
        })
    }

    /// Answers a GET or HEAD another node sent over the peer protocol because this
    /// node owns the URL: from the tiers, or from the origin (collapsed with every
    /// other request for it), never routed on to another peer.
    pub async fn handle_for_peer(
        self: Arc<Self>,
        parts: http::request::Parts,
        peer: IpAddr,
    ) -> Response<Body> {
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "peers fetch with GET or HEAD only",
            );
        }
        use http_body_util::BodyExt;
        let body = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| -> crate::http::BoxError { match never {} })
            .boxed_unsync();
        match self.context(parts, peer, true) {
            Ok(ctx) => self.dispatch(ctx, body).await,
            Err(refusal) => *refusal,
        }
    }

    /// The request's facts: its target and the origin serving its host (a request
    /// no origin serves is refused).
    fn context(
        &self,
        parts: http::request::Parts,
        client: IpAddr,
        from_peer: bool,
    ) -> Result<Ctx, Box<Response<Body>>> {
        // A peer's request carries an absolute URL: its scheme is the key's.
        let mut target = match Target::of(&parts, self.front_tls && !from_peer) {
            Ok(t) => t,
            Err(reason) => return Err(Box::new(text(StatusCode::BAD_REQUEST, reason))),
        };
        let origins = self.origins.get();
        let rule = target.apply_rules(origins.rules());
        if let (Some(rule), false) = (&rule, from_peer) {
            // Counted where the client's request arrived, once per request.
            origins.rules().count_match(rule.index);
        }
        let origin = rule
            .as_ref()
            .and_then(|r| origins.for_rule(r.index))
            .or_else(|| origins.for_host(&target.host))
            .cloned();
        let Some(origin) = origin else {
            return Err(Box::new(text(
                StatusCode::MISDIRECTED_REQUEST,
                format!("no origin serves host {:?}", target.host),
            )));
        };
        Ok(Ctx {
            method: parts.method,
            headers: parts.headers,
            primary: target.primary_key(),
            target,
            origin,
            client,
            from_peer,
            rule,
        })
    }

    async fn dispatch(self: Arc<Self>, ctx: Ctx, body: ReqBody) -> Response<Body> {
        match ctx.method {
            Method::GET | Method::HEAD => self.cacheable(ctx).await,
            // Boxed, as every path that leaves the cache: a hit's future stays small
            // (it is moved on every request, and is as large as its largest branch).
            _ => Box::pin(self.forward_unsafe(ctx, body)).await,
        }
    }

    /// A GET or HEAD answered from the memory tier without waiting, when the entry
    /// may be reused as it is. `None` leaves the request to [`Proxy::cacheable`],
    /// which looks again (the disk tier too) and counts the lookup.
    fn answer_from_memory(self: &Arc<Self>, ctx: &Ctx) -> Option<Response<Body>> {
        let asks = RequestDirectives::of(&ctx.headers);
        if asks.facts.authorization {
            return None;
        }
        let primary = self.cache.find_in_memory(&ctx.primary)?;
        let variant;
        let (key, found) = match marker_fields(primary.meta()) {
            Some(fields) => {
                variant = variant_key(&ctx.primary, &fields, &ctx.headers);
                let found = self.cache.find_in_memory(&variant)?;
                (&variant, found)
            }
            None => (&ctx.primary, primary),
        };
        let policy = self.cache.hit_policy_now()?;
        self.reuse(ctx, key, &found, asks, policy)
    }

    async fn cacheable(self: Arc<Self>, ctx: Ctx) -> Response<Body> {
        if ctx.bypass() {
            let status = CacheStatus::forward(Fwd::Bypass).detail("rule");
            return Box::pin(self.direct(&ctx, status)).await;
        }
        let asks = RequestDirectives::of(&ctx.headers);
        let facts = asks.facts;
        let mut key = ctx.primary.clone();
        let mut vary_known = false;
        let mut found = self.cache.find(&ctx.primary).await;
        if let Some(fields) = found.as_ref().and_then(|f| marker_fields(f.meta())) {
            key = variant_key(&ctx.primary, &fields, &ctx.headers);
            vary_known = true;
            found = self.cache.find(&key).await;
        }
        // With Authorization, only a stored response its origin let a shared cache
        // keep and serve answers (RFC 9111 §3.5); otherwise the request goes to the
        // origin alone, and its answer is stored only if it allows sharing.
        let shared = |f: &Found| {
            policy::stored_response_shared_despite_authorization(&stored_headers(f.meta()))
        };
        if facts.authorization && !found.as_ref().is_some_and(shared) {
            return Box::pin(self.fetch(ctx, None, None, false, facts, Fwd::Bypass)).await;
        }
        if let Some(f) = found {
            let policy = self.cache.hit_policy().await;
            if let Some(response) = self.reuse(&ctx, &key, &f, asks, policy) {
                return response;
            }
            self.cache.count_lookup(f.tier, LookupResult::Expired);
            if asks.only_if_cached {
                return only_if_cached_miss();
            }
            return Box::pin(self.fetch(ctx, Some(key), Some(f), true, facts, Fwd::Stale)).await;
        }
        self.cache
            .count_lookup(crate::store::Tier::Memory, LookupResult::Miss);
        if asks.only_if_cached {
            return only_if_cached_miss();
        }
        let now = self.cache.now_ms();
        if self.uncacheable.get(&key).is_some_and(|until| *until > now) {
            return Box::pin(self.direct(&ctx, miss("uncacheable"))).await;
        }
        if ctx.method == Method::HEAD {
            // Nothing stored to answer it from: the origin answers the HEAD itself.
            return Box::pin(self.direct(&ctx, miss("head"))).await;
        }
        let fwd = if vary_known {
            Fwd::VaryMiss
        } else {
            Fwd::UriMiss
        };
        // A client's own conditional goes to the origin (the cache has no validator
        // of its own to answer it with): a fetch of its own, not one shared.
        let collapse = !CLIENT_VALIDATORS
            .iter()
            .any(|name| ctx.headers.contains_key(name));
        Box::pin(self.fetch(ctx, Some(key), None, collapse, facts, fwd)).await
    }

    /// A response from stored entry `found` (under `key`), if it may be reused as
    /// it is: fresh, or stale inside its `stale-while-revalidate` window (one
    /// background refresh then starts). Counts the lookup when it answers; `None`
    /// when the entry must be revalidated first (the caller counts that). Out of
    /// sync with the cluster's purges (`policy`), a hit is marked, or (consistency
    /// mode, or right after a stall) revalidated.
    fn reuse(
        self: &Arc<Self>,
        ctx: &Ctx,
        key: &CacheKey,
        found: &Found,
        asks: RequestDirectives,
        policy: HitPolicy,
    ) -> Option<Response<Body>> {
        let (must_revalidate, unsynced) = match policy {
            HitPolicy::Serve => (asks.must_revalidate, false),
            HitPolicy::ServeUnsynced => (asks.must_revalidate, true),
            HitPolicy::Revalidate => (true, false),
        };
        let now = self.cache.now_ms();
        let ttl_ms = found.ttl_ms(now);
        // The request's own limits (RFC 9111 §5.2.1.1, §5.2.1.3).
        let too_old = asks
            .max_age
            .is_some_and(|max| found.meta().age_ms(now) / 1000 > max);
        let too_close_to_stale = asks
            .min_fresh
            .is_some_and(|min| ttl_ms < (min as i64).saturating_mul(1000));
        if must_revalidate || too_old || too_close_to_stale {
            return None;
        }
        if ttl_ms > 0 {
            self.cache.count_lookup(found.tier, LookupResult::Hit);
            let mut status = CacheStatus::hit(ttl_ms / 1000);
            if unsynced {
                status = status.detail("unsynced");
            }
            return Some(self.serve(ctx, found, &status));
        }
        let stale_ms = ttl_ms.unsigned_abs();
        if stale_ms > found.meta().stale_while_revalidate_ms {
            return None;
        }
        self.cache.count_lookup(found.tier, LookupResult::Stale);
        if !self.flights.in_flight(key) {
            let refresh = self.clone();
            let (ctx, key, facts) = (ctx.clone(), key.clone(), asks.facts);
            tokio::spawn(async move {
                // The response is dropped: the fill stores what the origin sends.
                let _ = refresh
                    .fetch(ctx, Some(key), None, true, facts, Fwd::Stale)
                    .await;
            });
        }
        let status = CacheStatus::hit(0)
            .stale_for(stale_ms.div_ceil(1000))
            .detail("stale-while-revalidate");
        Some(self.serve(ctx, found, &status))
    }

    /// How responses to this request are shaped: a peer gets the tag headers.
    fn shaping_for(&self, ctx: &Ctx) -> Shaping {
        if ctx.from_peer {
            Shaping { strip_tags: false }
        } else {
            self.shaping
        }
    }

    /// A response from a stored entry.
    fn serve(&self, ctx: &Ctx, found: &Found, cache_status: &CacheStatus) -> Response<Body> {
        let entry = &found.entry;
        let age = entry.meta.age_ms(self.cache.now_ms()) / 1000;
        let mut response = self.shaping_for(ctx).entry_response(
            &ctx.method,
            &ctx.headers,
            &entry.meta,
            &entry.body,
            age,
            cache_status,
        );
        tell_peer_version(ctx, response.headers_mut(), entry.meta.version);
        response
    }

    /// Fetches `key` (`None`: the primary key) from the origin, collapsing with other
    /// requests for it when `collapse`, revalidating `stale` when given.
    async fn fetch(
        self: Arc<Self>,
        ctx: Ctx,
        key: Option<CacheKey>,
        stale: Option<Found>,
        collapse: bool,
        facts: RequestFacts,
        fwd: Fwd,
    ) -> Response<Body> {
        let key = key.unwrap_or_else(|| ctx.primary.clone());
        for _ in 0..MAX_REJOINS {
            let joined = if collapse {
                self.flights.join(&key)
            } else {
                Joined::Leader(self.flights.solo(&key))
            };
            match joined {
                Joined::Leader(leader) => {
                    // Alone and with nothing stored: the client's conditionals are its own.
                    let conditionals = if !collapse && stale.is_none() {
                        Conditionals::Client
                    } else {
                        Conditionals::Stored
                    };
                    return self
                        .lead(&ctx, leader, stale, facts, fwd, conditionals)
                        .await;
                }
                Joined::Follower(flight) => match flight.outcome().await {
                    Outcome::Shared(head) => {
                        if let Some((fields, leader_headers)) = &head.vary {
                            if variant_key(&ctx.primary, fields, &ctx.headers)
                                != variant_key(&ctx.primary, fields, leader_headers)
                            {
                                return self
                                    .direct(&ctx, CacheStatus::forward(Fwd::VaryMiss))
                                    .await;
                            }
                        }
                        let status = CacheStatus::forward(fwd).collapsed().ttl(head.ttl_secs);
                        let body = if ctx.method == Method::HEAD {
                            crate::http::full(Bytes::new())
                        } else {
                            match flight.subscribe() {
                                Some(body) => body,
                                // Too large to replay: fetch it on our own.
                                None => return self.direct(&ctx, miss("too-large")).await,
                            }
                        };
                        self.metrics.collapsed.inc();
                        return self.respond_with_head(&ctx, &head, body, &status);
                    }
                    Outcome::Uncacheable => return self.direct(&ctx, miss("uncacheable")).await,
                    Outcome::Failed(failure) => {
                        return self.failure_or_stale(&ctx, stale.as_ref(), &failure)
                    }
                    Outcome::Abandoned => continue,
                },
            }
        }
        self.direct(&ctx, miss("abandoned")).await
    }

    /// The leader's fetch: one origin request, then store-and-stream or pass through.
    async fn lead(
        &self,
        ctx: &Ctx,
        leader: Leader,
        stale: Option<Found>,
        facts: RequestFacts,
        fwd: Fwd,
        conditionals: Conditionals,
    ) -> Response<Body> {
        let version = self.cache.begin_fill();
        let request_ms = self.cache.now_ms();
        let mut headers = self.origin_request_headers(ctx);
        let strip = match conditionals {
            Conditionals::Stored => CLIENT_CONDITIONALS,
            Conditionals::Client => PARTIAL,
        };
        for name in strip {
            headers.remove(name);
        }
        let validators = stale.as_ref().map(|s| stored_headers(s.meta()));
        if let Some(v) = &validators {
            add_validators(&mut headers, v);
        }
        let (sent, via) = self
            .upstream(ctx, &Method::GET, &headers, validators.as_ref())
            .await;
        // An owner's answer is stored no newer than the entry it came from: a purge
        // that covers the owner's copy covers ours.
        let (version, via) = match via {
            Some((owner, owner_version)) => (version.min(owner_version), Some(owner)),
            None => (version, None),
        };
        let response_ms = self.cache.now_ms();
        let OriginResponse { response, permit } = match sent {
            Ok(r) => r,
            Err(e) => {
                let failure = fill::failure(&e);
                leader.flight().publish(Outcome::Failed(failure.clone()));
                leader.complete();
                return self.failure_or_stale(ctx, stale.as_ref(), &failure);
            }
        };
        let status = response.status();
        if let (Some(s), StatusCode::NOT_MODIFIED) = (&stale, status) {
            return self
                .refreshed(
                    ctx,
                    leader,
                    s,
                    response.headers(),
                    version,
                    request_ms,
                    response_ms,
                )
                .await;
        }
        if status.is_server_error()
            && stale
                .as_ref()
                .is_some_and(|s| within_stale_if_error(s, response_ms))
        {
            let failure = Failure {
                status,
                message: format!("origin answered {status}").into(),
                retry_after: None,
                origin_unavailable: false,
            };
            leader.flight().publish(Outcome::Failed(failure.clone()));
            leader.complete();
            return self.failure_or_stale(ctx, stale.as_ref(), &failure);
        }
        let decision = self.evaluate(
            ctx,
            facts,
            status,
            response.headers(),
            (request_ms, response_ms),
        );
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = declared.is_some_and(|n| n > self.max_object_size);
        let admitted = decision.is_err() || too_large || self.admit_copy(&ctx.primary);
        let forwarded = CacheStatus::forward(fwd)
            .via(via.as_deref())
            .fwd_status(status.as_u16());
        match decision {
            Ok(storable) if !too_large && admitted => {
                let plan = fill::plan(
                    &self.shaping_for(ctx),
                    (&ctx.primary, ctx.key_fields()),
                    &ctx.headers,
                    status,
                    response.headers(),
                    &storable,
                    version,
                    response_ms,
                );
                let head = plan.head.clone();
                let flight = leader.flight().clone();
                flight.publish(Outcome::Shared(head.clone()));
                let cache_status = forwarded.stored().ttl(head.ttl_secs);
                // Subscribed before the pump starts: the replay buffer is still there.
                let body = match (ctx.method == Method::HEAD, flight.subscribe()) {
                    (false, Some(body)) => body,
                    _ => crate::http::full(Bytes::new()),
                };
                tokio::spawn(fill::pump(
                    self.cache.clone(),
                    leader,
                    response.into_body(),
                    permit,
                    plan,
                    self.max_object_size,
                    self.total_timeout,
                ));
                self.respond_with_head(ctx, &head, body, &cache_status)
            }
            decision => {
                leader.flight().publish(Outcome::Uncacheable);
                leader.complete();
                let detail = match decision {
                    Err(reason) => reason.as_str(),
                    Ok(_) if too_large => "too-large",
                    Ok(_) => "not-admitted",
                };
                // A 304 to the client's own conditional says nothing of the URL.
                if decision.is_err() && status != StatusCode::NOT_MODIFIED {
                    self.uncacheable.insert(
                        ctx.primary.clone(),
                        response_ms + self.uncacheable_ttl_ms.load(Ordering::Relaxed),
                    );
                }
                let cache_status = forwarded.detail(detail);
                self.pass_through(ctx, response, permit, &cache_status)
            }
        }
    }

    /// A response built from a flight's shared head.
    fn respond_with_head(
        &self,
        ctx: &Ctx,
        head: &SharedHead,
        body: Body,
        cache_status: &CacheStatus,
    ) -> Response<Body> {
        let mut headers = head.headers.clone();
        // The current age (RFC 9111 §4.2.3): what the origin said, plus time since.
        let age_secs = self.cache.now_ms().saturating_sub(head.born_ms) / 1000;
        self.shaping_for(ctx)
            .client_headers(&mut headers, Some(age_secs), cache_status);
        tell_peer_version(ctx, &mut headers, head.version);
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.headers_mut() = headers;
        response
    }

    /// An uncached fetch straight to the origin, streamed through.
    async fn direct(&self, ctx: &Ctx, cache_status: CacheStatus) -> Response<Body> {
        let mut headers = self.origin_request_headers(ctx);
        headers.remove(header::RANGE);
        match self.upstream(ctx, &ctx.method, &headers, None).await.0 {
            Ok(OriginResponse { response, permit }) => {
                self.pass_through(ctx, response, permit, &cache_status)
            }
            Err(e) => origin_failure(
                e.status(),
                &e.to_string(),
                e.retry_after_secs(),
                &miss("origin-error"),
            ),
        }
    }

    /// Streams an origin response to the client, holding the bulkhead slot until the
    /// body is done, and cutting it off at the total origin timeout.
    fn pass_through(
        &self,
        ctx: &Ctx,
        response: Response<Body>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        cache_status: &CacheStatus,
    ) -> Response<Body> {
        let (parts, body) = response.into_parts();
        let deadline = tokio::time::Instant::now() + self.total_timeout;
        let body = crate::http::with_deadline(body, deadline, permit);
        self.shaping_for(ctx)
            .pass_through(&ctx.method, parts, body, cache_status)
    }

    /// Stale content if the entry's stale-if-error window allows it, or, when the
    /// origin is unavailable (breaker open: the cache is disconnected, RFC 9111
    /// §4.2.4), any stale entry the origin did not forbid serving stale; else the failure.
    fn failure_or_stale(
        &self,
        ctx: &Ctx,
        stale: Option<&Found>,
        failure: &Failure,
    ) -> Response<Body> {
        let now = self.cache.now_ms();
        let status = failure.status;
        match stale {
            Some(s) if within_stale_if_error(s, now) => {
                let stale_secs = s.ttl_ms(now).unsigned_abs().div_ceil(1000);
                let cache_status = CacheStatus::forward(Fwd::Stale)
                    .fwd_status(status.as_u16())
                    .stale_for(stale_secs)
                    .detail("stale-if-error");
                self.serve(ctx, s, &cache_status)
            }
            Some(s)
                if failure.origin_unavailable
                    && !policy::forbids_stale_when_disconnected(&stored_headers(s.meta())) =>
            {
                let stale_secs = s.ttl_ms(now).unsigned_abs().div_ceil(1000);
                let cache_status = CacheStatus::hit(0)
                    .stale_for(stale_secs)
                    .detail("origin-unavailable");
                self.serve(ctx, s, &cache_status)
            }
            _ => origin_failure(
                status,
                &failure.message,
                failure.retry_after,
                &miss("origin-error"),
            ),
        }
    }
}

/// Went to the origin with nothing stored, for `detail`.
fn miss(detail: &'static str) -> CacheStatus {
    CacheStatus::forward(Fwd::UriMiss).detail(detail)
}

/// RFC 9111 §5.2.1.7: nothing stored may answer, and the origin may not be asked.
fn only_if_cached_miss() -> Response<Body> {
    origin_failure(
        StatusCode::GATEWAY_TIMEOUT,
        "only-if-cached: no stored response answers this request",
        None,
        &miss("only-if-cached"),
    )
}

fn within_stale_if_error(found: &Found, now_ms: u64) -> bool {
    let ttl = found.ttl_ms(now_ms);
    ttl > 0 || ttl.unsigned_abs() <= found.meta().stale_if_error_ms
}
