//! The main listener's service: the KV API under its prefix (`/kv/{key}` by default:
//! GET, HEAD, PUT, DELETE), the `PURGE` method (Varnish/Squid convention), and
//! everything else handed to the pull-through proxy when an origin is configured.
//! Requests under the KV prefix never reach an origin.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fanz_protocol::peer::Message;
use fanz_protocol::{CacheKey, Entry, EntryMeta, Timestamp};
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};

use super::purge::Purger;
use super::write_order::{Precondition, Turn, WriteOrder};
use crate::auth::{Auth, Scope};
use crate::cache::HitPolicy;
use crate::cache::{Cache, Freshness, Lookup, MissReason, SetOutcome};
use crate::cluster::replication::{PurgeReport, Replicator, Wait};
use crate::cluster::routing::Routing;
use crate::config::TtlPolicy;
use crate::http::cache_status::{CacheStatus, Fwd};
use crate::http::headers::{self, HeaderError};
use crate::http::range;
use crate::http::traceparent::hex_into;
use crate::http::{full, json, read_body, text, Answer, Body, ReqBody};
use crate::invalidation::{PurgeOutcome, PurgeTargets};
use crate::live::Live;
use crate::proxy::{Proxy, PurgeTarget};
use crate::store::Tier;

/// How many dependents a write invalidated.
const FANZ_INVALIDATED: HeaderName = HeaderName::from_static("fanz-invalidated");
/// How many of a key's owners a write reached (`done/asked`), in a cluster.
const FANZ_WRITTEN: HeaderName = HeaderName::from_static("fanz-written");

/// Header that turns a `PURGE` into a soft purge.
pub const SOFT_PURGE_HEADER: &str = "fanz-soft-purge";

/// Limits and defaults of the KV API.
#[derive(Debug, Clone)]
pub struct KvLimits {
    /// Longest key (414 beyond).
    pub max_key_size: usize,
    /// Largest value (413 beyond).
    pub max_value_size: u64,
    /// Time to receive a body (408 beyond).
    pub body_read_timeout: Duration,
    /// The TTL policy (reloadable).
    pub ttl: Arc<Live<TtlPolicy>>,
    /// Path prefix of the KV API (`/kv/`).
    pub prefix: String,
}

/// The main listener's service.
#[derive(Debug)]
pub struct MainService {
    cache: Arc<Cache>,
    auth: Auth,
    limits: KvLimits,
    proxy: Option<Arc<Proxy>>,
    routing: Arc<Routing>,
    replicator: Arc<Replicator>,
    purger: Arc<Purger>,
    /// A node on its own takes a turn here from a write's precondition check to its
    /// end, so that no other write of the key comes between them.
    write_order: WriteOrder,
}

impl MainService {
    /// Builds the service: keys are read from and written to their owners by
    /// `routing`, and overwrites and deletes reach every member through
    /// `replicator` (a cluster of one owns every key and has no one to tell).
    pub fn new(
        cache: Arc<Cache>,
        auth: Auth,
        limits: KvLimits,
        proxy: Option<Arc<Proxy>>,
        (routing, replicator): (Arc<Routing>, Arc<Replicator>),
        purger: Arc<Purger>,
    ) -> Self {
        Self {
            cache,
            auth,
            limits,
            proxy,
            routing,
            replicator,
            purger,
            write_order: WriteOrder::default(),
        }
    }

    /// Answers one request: a KV read or a proxied GET that the memory tier can
    /// answer at once; anything else later, through [`MainService::handle`].
    pub fn answer(self: &Arc<Self>, req: Request<ReqBody>, peer: SocketAddr) -> Answer {
        if matches!(*req.method(), Method::GET | Method::HEAD) {
            match req.uri().path().strip_prefix(self.limits.prefix.as_str()) {
                None => {
                    if let Some(proxy) = &self.proxy {
                        return proxy.answer(req, peer);
                    }
                }
                Some(raw_key) => {
                    if let Some(response) = self.hit_in_memory(raw_key, &req) {
                        return Answer::Now(response);
                    }
                }
            }
        }
        let this = self.clone();
        Answer::later(async move { this.handle(req, peer).await })
    }

    /// A KV read answered from the memory tier without waiting, when this node may
    /// vouch for the value as [`MainService::get`] would serve it; `None` leaves the
    /// request to it (which also answers bad keys).
    fn hit_in_memory(&self, raw_key: &str, req: &Request<ReqBody>) -> Option<Response<Body>> {
        let key = self.parse_key(raw_key).ok()?;
        if self.cache.hit_policy_now()? != HitPolicy::Serve
            || !self.owns(&key)
            || !self.cache.settled()
        {
            return None;
        }
        let hit = self.cache.hit_in_memory(&key)?;
        let status = hit_status(hit.freshness, hit.tier);
        Some(hit_response(&hit, &status, req.method(), req.headers()))
    }

    /// Answers one request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<ReqBody>,
        peer: SocketAddr,
    ) -> Response<Body> {
        if req.method().as_str() == "PURGE" {
            // Cold paths are boxed: this future is moved on every request, and its
            // size is that of its largest branch.
            return Box::pin(self.purge(&req.into_parts().0, peer)).await;
        }
        let Some(raw_key) = req.uri().path().strip_prefix(self.limits.prefix.as_str()) else {
            return match &self.proxy {
                Some(proxy) => proxy.answer(req, peer).resolve().await,
                None => text(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no such resource: the KV API lives under {}{{key}} and no origin is configured",
                        self.limits.prefix
                    ),
                ),
            };
        };
        let key = match self.parse_key(raw_key) {
            Ok(key) => key,
            Err(response) => return *response,
        };
        let (parts, body) = req.into_parts();
        match parts.method {
            Method::GET | Method::HEAD => self.get(&key, &parts).await,
            Method::PUT => Box::pin(self.put(key, &parts, body)).await,
            Method::DELETE => Box::pin(self.delete(key, &parts.headers)).await,
            _ => {
                let mut r = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{} is not allowed on a key", parts.method),
                );
                r.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, PUT, DELETE, PURGE"),
                );
                r
            }
        }
    }

    /// The key of `/kv/{key}`: percent-decoded, not empty, within the limit.
    fn parse_key(&self, raw: &str) -> Result<CacheKey, Box<Response<Body>>> {
        let key = self.parse_key_prefix(raw)?;
        if key.user_key().is_empty() {
            return Err(Box::new(text(StatusCode::BAD_REQUEST, "empty key")));
        }
        Ok(key)
    }

    /// A key prefix (`/kv/{prefix}*`): percent-decoded, within the key limit, empty
    /// for every key.
    fn parse_key_prefix(&self, raw: &str) -> Result<CacheKey, Box<Response<Body>>> {
        let key = fanz_protocol::percent::decode(raw)
            .map_err(|e| Box::new(text(StatusCode::BAD_REQUEST, e)))?;
        if key.len() > self.limits.max_key_size {
            return Err(Box::new(text(
                StatusCode::URI_TOO_LONG,
                format!(
                    "key is {} bytes; the limit is {}",
                    key.len(),
                    self.limits.max_key_size
                ),
            )));
        }
        Ok(CacheKey::kv(&key))
    }

    async fn get(&self, key: &CacheKey, req: &Parts) -> Response<Body> {
        read_response(self.read(key).await, &req.method, &req.headers)
    }

    /// A KV read, whichever protocol asked: this node's copy when it may vouch for
    /// it, else the owners' (see [`KvRead`]).
    pub async fn read(&self, key: &CacheKey) -> KvRead {
        let hit = match self.cache.get(key).await {
            Lookup::Hit(hit) => hit,
            Lookup::Miss(reason) => {
                match Box::pin(self.read_from_owners(key)).await {
                    OwnerRead::Found(entry, owner) => {
                        let status = CacheStatus::forward(Fwd::UriMiss).via(Some(&owner));
                        return self.owners_copy(entry, status);
                    }
                    OwnerRead::NotFound => {}
                    OwnerRead::NoAnswer => {
                        // Only this node's word: not enough while it may have missed
                        // the write (no sync lease).
                        if self.cache.hit_policy().await == HitPolicy::Revalidate {
                            return out_of_sync(self.cache.unsure_because());
                        }
                    }
                }
                return KvRead::Missing(Some(miss_status(reason)));
            }
        };
        let policy = self.cache.hit_policy().await;
        if policy != HitPolicy::Revalidate {
            // A copy from when this node owned the key (before a member came back),
            // or one held while ownership just moved: the other owners may have had
            // writes since, or this may be the newest copy there is.
            if !self.owns(key) {
                return Box::pin(self.read_newest(key, hit, "former-owner")).await;
            }
            if !self.cache.settled() {
                return Box::pin(self.read_newest(key, hit, "settling")).await;
            }
        }
        let mut status = hit_status(hit.freshness, hit.tier);
        match policy {
            HitPolicy::Serve => {}
            HitPolicy::ServeUnsynced => status = status.detail("unsynced"),
            HitPolicy::Revalidate => {
                return Box::pin(self.confirm_with_owners(key, "revalidated-unsynced")).await
            }
        }
        KvRead::Hit(hit, status)
    }

    /// A KV read answered with another owner's copy.
    fn owners_copy(&self, entry: Entry, status: CacheStatus) -> KvRead {
        let age = entry.meta.age_ms(self.cache.now_ms()) / 1000;
        KvRead::Copy(entry, age, status)
    }

    /// Whether this node owns `key` (a cluster of one owns everything).
    fn owns(&self, key: &CacheKey) -> bool {
        self.routing.is_owner(key)
    }

    /// A hit this node cannot vouch for (out of sync in consistency mode, or a
    /// copy from when it owned the key): answered from the (other) owners, or 503
    /// when none answers. `detail` says why, in `Cache-Status`.
    async fn confirm_with_owners(&self, key: &CacheKey, detail: &'static str) -> KvRead {
        match self.read_from_owners(key).await {
            OwnerRead::Found(entry, owner) => {
                let status = CacheStatus::forward(Fwd::UriMiss)
                    .via(Some(&owner))
                    .detail(detail);
                self.owners_copy(entry, status)
            }
            OwnerRead::NotFound => KvRead::Missing(None),
            OwnerRead::NoAnswer => out_of_sync(self.cache.unsure_because()),
        }
    }

    /// A key read from every (other) owner at once: the newest version any of them
    /// holds wins, unless a purge or delete this node applied covers it. Asking one
    /// owner is not enough: one that was down or cut off during a write, or became
    /// an owner after it, answers with an older value or none.
    ///
    /// An owner asks too: it may have become an owner after the key was written
    /// (another owner left), and then keeps what it reads (read repair).
    async fn read_from_owners(&self, key: &CacheKey) -> OwnerRead {
        self.read_from_every_owner(key).await.0
    }

    /// [`Self::read_from_owners`], and whether every owner asked answered.
    ///
    /// A copy this node's purges, deletes and overwrites cover is never taken: an
    /// owner that missed a delete does not bring the value back. This holds when
    /// this node found a covered copy of its own too; that says nothing of what the
    /// others hold (the copy an overwrite covers, not yet dropped, hides a newer
    /// value elsewhere).
    async fn read_from_every_owner(&self, key: &CacheKey) -> (OwnerRead, bool) {
        let routing = &self.routing;
        let (is_owner, others) = routing.other_owners(key);
        let asked = others.len();
        let request = Arc::new(Message::Get { key: key.clone() });
        let mut asks = tokio::task::JoinSet::new();
        for (owner, addr) in others {
            let (routing, request) = (routing.clone(), request.clone());
            asks.spawn(async move { (owner, routing.call(addr, &request).await) });
        }
        // A copy an owner cannot vouch for (it is catching up) is judged here, by
        // the purges this node applied: only when this node is in sync itself.
        let judge_unvouched = self.cache.hit_policy().await == HitPolicy::Serve;
        let mut newest: Option<(Entry, String)> = None;
        // Owners that answered for their copies, and those that only said what they
        // hold (none, or a copy judged here): either way nothing newer hides there.
        let (mut answers, mut spoke) = (0, 0);
        while let Some(joined) = asks.join_next().await {
            let Ok((owner, answer)) = joined else {
                continue;
            };
            let (entry, vouched) = match answer {
                Ok(Message::Found { entry }) => (entry, true),
                Ok(Message::Unvouched { entry: None }) => {
                    spoke += 1;
                    continue;
                }
                Ok(Message::Unvouched { entry: Some(entry) }) if judge_unvouched => (entry, false),
                Ok(Message::Unvouched { .. }) => continue,
                Ok(_) => {
                    answers += 1;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(%owner, error = %e, "owner read failed");
                    continue;
                }
            };
            match Entry::decode(entry) {
                Ok(entry) => {
                    if vouched {
                        answers += 1;
                    } else {
                        spoke += 1;
                    }
                    if self.cache.covered(key, &entry.meta) {
                        continue;
                    }
                    if newest
                        .as_ref()
                        .is_none_or(|(n, _)| n.meta.version < entry.meta.version)
                    {
                        newest = Some((entry, owner));
                    }
                }
                Err(e) => tracing::warn!(%owner, error = %e, "owner sent a damaged entry"),
            }
        }
        let every = answers + spoke == asked;
        let read = match newest {
            Some((entry, owner)) => {
                if is_owner {
                    // Stored as a fill (a purge newer than the entry wins), and never
                    // over a newer copy that landed meanwhile.
                    if let Err(e) = self.cache.repair(key.clone(), entry.clone()).await {
                        tracing::warn!(error = %e, "read repair not stored");
                    }
                }
                OwnerRead::Found(entry, owner)
            }
            None if answers > 0 => OwnerRead::NotFound,
            None => OwnerRead::NoAnswer,
        };
        (read, every)
    }

    /// A hit that may not be the newest copy (this node no longer owns the key, or
    /// ownership just moved): the owners' newest version if one is newer, else this
    /// copy, which no purge, delete or overwrite record applied here has covered
    /// (the owners may have come back without it). `detail` says why, in
    /// `Cache-Status`.
    async fn read_newest(
        &self,
        key: &CacheKey,
        hit: crate::cache::Hit,
        detail: &'static str,
    ) -> KvRead {
        let (read, every) = self.read_from_every_owner(key).await;
        if let OwnerRead::Found(entry, owner) = read {
            if entry.meta.version > hit.entry().meta.version {
                let status = CacheStatus::forward(Fwd::UriMiss)
                    .via(Some(&owner))
                    .detail(detail);
                return self.owners_copy(entry, status);
            }
        }
        if !every {
            // An owner that did not answer may hold a newer value: this copy is
            // only known to be the newest once every owner has spoken.
            return KvRead::Unavailable(
                "ownership of this key just moved and not every owner answered: retry, or read through another node".into(),
            );
        }
        let status = hit_status(hit.freshness, hit.tier).detail(detail);
        KvRead::Hit(hit, status)
    }
}

/// What the other owners said about a key.
enum OwnerRead {
    /// One had it.
    Found(Entry, String),
    /// An owner answered and none had a copy that no purge here covers.
    NotFound,
    /// None answered (or there is no other owner, or no cluster).
    NoAnswer,
}

/// What a KV read found, before a protocol words it.
#[derive(Debug)]
pub enum KvRead {
    /// This node's copy, which it may serve.
    Hit(crate::cache::Hit, CacheStatus),
    /// Another owner's copy, its age in seconds.
    Copy(Entry, u64, CacheStatus),
    /// No value (the miss's `Cache-Status` when this node looked itself).
    Missing(Option<CacheStatus>),
    /// No answer that can be vouched for: why (503 over HTTP).
    Unavailable(Cow<'static, str>),
}

impl KvRead {
    /// The value found, if any.
    pub fn entry(&self) -> Option<&Entry> {
        match self {
            KvRead::Hit(hit, _) => Some(hit.entry()),
            KvRead::Copy(entry, ..) => Some(entry),
            KvRead::Missing(_) | KvRead::Unavailable(_) => None,
        }
    }
}

/// The answer of a node that cannot vouch for what it holds and reached no owner
/// that can.
fn out_of_sync(because: &str) -> KvRead {
    KvRead::Unavailable(
        format!("this node cannot vouch for its copies ({because}; partition_mode = consistency) and no other owner of the key answers").into(),
    )
}

/// A duration asked for (or `default`), at most `max`, in milliseconds: the TTL
/// policy's clamp of every written value's windows.
fn clamp(asked: Option<Duration>, default: Duration, max: Duration) -> u64 {
    asked.unwrap_or(default).min(max).as_millis() as u64
}

/// The HTTP answer to a KV read.
fn read_response(read: KvRead, method: &Method, request: &HeaderMap) -> Response<Body> {
    match read {
        KvRead::Hit(hit, status) => hit_response(&hit, &status, method, request),
        KvRead::Copy(entry, age, status) => entry_response(&entry, age, &status, method, request),
        KvRead::Missing(status) => {
            let mut r = text(StatusCode::NOT_FOUND, "not found");
            if let Some(status) = status {
                r.headers_mut()
                    .insert("cache-status", status.header_value());
            }
            r
        }
        KvRead::Unavailable(why) => text(StatusCode::SERVICE_UNAVAILABLE, why.into_owned()),
    }
}

impl MainService {
    /// Sends the request `make` builds (a Put) to the other owners of `key` at once;
    /// returns whether this node owns it, how many carried it out and how many were
    /// asked. Built only when there is another owner to send it to.
    async fn write_to_owners(
        &self,
        key: &CacheKey,
        make: impl FnOnce() -> Message,
    ) -> (bool, usize, usize) {
        let routing = &self.routing;
        let (is_owner, others) = routing.other_owners(key);
        let asked = others.len();
        if others.is_empty() {
            return (is_owner, 0, 0);
        }
        let request = Arc::new(make());
        let mut calls = tokio::task::JoinSet::new();
        for (owner, addr) in others {
            let (routing, request) = (routing.clone(), request.clone());
            calls.spawn(async move { (owner, routing.call(addr, &request).await) });
        }
        let mut done = 0;
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((_, Ok(Message::Done))) => done += 1,
                Ok((owner, Ok(other))) => {
                    tracing::warn!(%owner, answer = ?other, "owner did not carry out a write")
                }
                Ok((owner, Err(e))) => tracing::warn!(%owner, error = %e, "owner write failed"),
                Err(e) => tracing::error!(error = %e, "owner write task failed"),
            }
        }
        (is_owner, done, asked)
    }

    async fn put(&self, key: CacheKey, req: &Parts, body: ReqBody) -> Response<Body> {
        // The version is taken before anything of the value is read: a purge that
        // arrives while the body is uploading covers this write.
        let version = match self.begin_write().await {
            Ok(version) => version,
            Err(refused) => return refused_response(refused),
        };
        let meta = match self.meta_from_headers(&key, &req.headers) {
            Ok(meta) => EntryMeta {
                version,
                born_ms: version.millis(),
                ..meta
            },
            Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let body = match read_body(
            body,
            self.limits.max_value_size,
            self.limits.body_read_timeout,
        )
        .await
        {
            Ok(body) => body,
            Err(e) => return e.response(),
        };
        let entry = Entry { meta, body };
        match self
            .write(key, entry, Precondition::of_headers(&req.headers))
            .await
        {
            Ok(written) => written_response(written),
            Err(refused) => refused_response(refused),
        }
    }

    /// The first step of a KV write, before its value is read: the version it will
    /// carry, or why this node takes no writes now.
    pub async fn begin_write(&self) -> Result<Timestamp, Refused> {
        if self.cache.hit_policy().await == HitPolicy::Revalidate {
            // Cut off (no sync lease), stalled or rejoining: the owners it can reach
            // may not be the ones the rest of the cluster reads from.
            return Err(Refused::OutOfSync(self.cache.unsure_because().to_owned()));
        }
        Ok(self.cache.begin_fill())
    }

    /// A KV write of `entry` (versioned by [`Self::begin_write`]), whichever
    /// protocol carried it: made on the key's owners when `precondition` holds, and
    /// acknowledged once every member applied it as an overwrite or is fenced.
    pub async fn write(
        &self,
        key: CacheKey,
        entry: Entry,
        precondition: Precondition<'_>,
    ) -> Result<Written, Refused> {
        let etag = etag(&entry.meta);
        let _ordered = self.order_write(&key, precondition).await?;
        let replicate = || Message::Put {
            key: key.clone(),
            entry: entry.encode(),
        };
        let (is_owner, done, asked) = self.write_to_owners(&key, replicate).await;
        // Overwrite is invalidation, on every node holding a dependent, and it
        // drops older copies of the key itself. The write is acknowledged only once
        // every member applied it or is fenced: an owner that did not confirm the
        // write may still hold the old value, and the owners seen here are not
        // always the ones another node reads from. Views converge at different
        // speeds; a node that has not yet seen a member come back still believes
        // it owns the key and serves its copy (RELIABILITY finding 15). No view
        // here can tell that no such node exists, so it is never taken as certain.
        let stored = done > 0 || is_owner;
        let confirmed = self
            .replicator
            .overwrite(&key, entry.meta.version, stored)
            .await;
        tracing::debug!(?key, version = %entry.meta.version.as_u64(), is_owner, done, asked, confirmed, "kv write");
        if !confirmed {
            return Err(Refused::Unconfirmed {
                written: done + usize::from(is_owner),
                owners: asked + usize::from(is_owner),
            });
        }
        if !is_owner {
            // Written to the owners only: this node keeps no copy of keys it does
            // not own, so reads here always see the owners' latest value.
            if done == 0 {
                return Err(Refused::NoOwner { asked });
            }
            return Ok(Written {
                etag,
                here: None,
                done,
                asked,
            });
        }
        match self.cache.set_reporting(key, entry).await {
            Ok(outcome) => Ok(Written {
                etag,
                here: Some(outcome),
                done,
                asked,
            }),
            Err(e @ crate::cache::CacheError::TooLong(_)) => Err(Refused::TooLong(e.to_string())),
            Err(e @ crate::cache::CacheError::NotOnDisk(_)) => {
                tracing::error!(error = %e, "a write waiting for the disk tier failed");
                Err(Refused::Failed(e.to_string()))
            }
            Err(e) => {
                tracing::error!(error = %e, "set failed");
                Err(Refused::Failed(format!("not stored: {e}")))
            }
        }
    }

    /// The metadata of a value written without headers (the Redis port): `ttl`, or
    /// `default_ttl` without one, clamped to `max_ttl`; version and birth are filled
    /// in by the caller.
    pub fn value_meta(&self, ttl: Option<Duration>) -> EntryMeta {
        let policy = self.limits.ttl.get();
        EntryMeta {
            ttl_ms: clamp(ttl, policy.default_ttl, policy.max_ttl),
            status: 200,
            ..EntryMeta::default()
        }
    }

    /// Entry metadata from a PUT's headers (version filled in by the caller).
    fn meta_from_headers(&self, key: &CacheKey, h: &HeaderMap) -> Result<EntryMeta, HeaderError> {
        let cc = headers::cache_control(h)?;
        let tags = headers::surrogate_keys(h)?;
        let depends_on = headers::depends_on(h, self.limits.max_key_size)?;
        if !depends_on.is_empty() && depends_on.contains(&fanz_protocol::InvalidationId::key(key)) {
            return Err(HeaderError {
                header: "Fanz-Depends-On",
                reason: "a key cannot depend on itself".into(),
            });
        }
        let ttl = self.limits.ttl.get();
        let mut kept_headers = Vec::new();
        if let Some(ct) = h.get(header::CONTENT_TYPE) {
            kept_headers.push((
                Bytes::from_static(b"content-type"),
                Bytes::copy_from_slice(ct.as_bytes()),
            ));
        }
        Ok(EntryMeta {
            ttl_ms: clamp(cc.max_age, ttl.default_ttl, ttl.max_ttl),
            stale_while_revalidate_ms: clamp(
                cc.stale_while_revalidate,
                Duration::ZERO,
                ttl.max_stale,
            ),
            stale_if_error_ms: clamp(cc.stale_if_error, Duration::ZERO, ttl.max_stale),
            status: 200,
            headers: kept_headers,
            tags,
            depends_on,
            ..EntryMeta::default()
        })
    }

    /// Orders a write of `key` against the node's other writes of it and evaluates
    /// its precondition against the current value, as a read here would judge it:
    /// the guard to hold until the write is done, or why it is refused (nothing
    /// written).
    ///
    /// Only a node on its own orders its writes: it alone writes its keys. In a
    /// cluster, several nodes write each key's owners and nothing orders them
    /// together yet, so a conditional write there is refused rather than
    /// evaluated without the guarantee it asks for.
    async fn order_write(
        &self,
        key: &CacheKey,
        precondition: Precondition<'_>,
    ) -> Result<Option<Turn<'_>>, Refused> {
        let conditional = precondition.conditional();
        if !self.routing.alone() {
            if conditional {
                return Err(Refused::ConditionalInCluster);
            }
            return Ok(None);
        }
        let turn = self.write_order.turn(key.encoded(), conditional).await;
        if conditional {
            let current = match self.cache.lookup(key).await {
                Lookup::Hit(hit) => Some(etag(&hit.entry.meta)),
                Lookup::Miss(_) => None,
            };
            let current_str = current.as_ref().and_then(|e| e.to_str().ok());
            if let Err(which) = precondition.holds(current_str) {
                return Err(Refused::Precondition { which, current });
            }
        }
        Ok(Some(turn))
    }

    /// `DELETE`: a purge of the key, 204 once every member applied it (in a cluster),
    /// 504 with the report when one had not within `purge_ack_timeout`.
    async fn delete(&self, key: CacheKey, headers: &HeaderMap) -> Response<Body> {
        match self.remove(key, Precondition::of_headers(headers)).await {
            Ok((outcome, incomplete)) => {
                let mut r = match incomplete {
                    // Gone here and retried to the rest, but not yet everywhere.
                    Some(report) => json(
                        StatusCode::GATEWAY_TIMEOUT,
                        &serde_json::json!({"status": "incomplete", "cluster": report}),
                    ),
                    None => {
                        let mut r = Response::new(full(Bytes::new()));
                        *r.status_mut() = StatusCode::NO_CONTENT;
                        r
                    }
                };
                r.headers_mut().insert(
                    FANZ_INVALIDATED,
                    HeaderValue::from(outcome.dependents.len()),
                );
                r
            }
            Err(refused) => refused_response(refused),
        }
    }

    /// A KV delete, whichever protocol asked: a purge of the key on every node,
    /// acknowledged by all of them (so no owner or hot copy answers with the old
    /// value), made when `precondition` holds. With it, the cluster's report when
    /// not every member applied it within `purge_ack_timeout` (gone here and
    /// retried to the rest).
    pub async fn remove(
        &self,
        key: CacheKey,
        precondition: Precondition<'_>,
    ) -> Result<(PurgeOutcome, Option<PurgeReport>), Refused> {
        let _ordered = self.order_write(&key, precondition).await?;
        let targets = PurgeTargets {
            keys: vec![key],
            ..PurgeTargets::default()
        };
        match self.replicator.purge(&targets, Wait::All).await {
            Ok((outcome, report)) => Ok((outcome, report.filter(|r| !r.complete))),
            Err(e) => Err(Refused::Failed(format!("delete not made durable: {e}"))),
        }
    }

    /// `PURGE /kv/{key}` purges the key; `PURGE` with `Surrogate-Key: a b` purges those
    /// tags. `Fanz-Soft-Purge: 1` makes it soft.
    async fn purge(&self, req: &Parts, peer: SocketAddr) -> Response<Body> {
        if let Err(denied) = self.auth.check(&req.headers, peer, Scope::Purge) {
            return denied.response;
        }
        let soft = req
            .headers
            .get(SOFT_PURGE_HEADER)
            .is_some_and(|v| v.as_bytes() == b"1" || v.as_bytes().eq_ignore_ascii_case(b"true"));
        let mut targets = PurgeTargets {
            soft,
            ..PurgeTargets::default()
        };
        if req.headers.contains_key("surrogate-key") {
            match headers::surrogate_keys(&req.headers) {
                Ok(tags) => targets.tags = tags,
                Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
            }
        } else if let Some(raw) = req.uri.path().strip_prefix(self.limits.prefix.as_str()) {
            // `/kv/user:*`: every key starting with `user:`; `/kv/*`: every key.
            let named = match raw.strip_suffix('*') {
                Some(prefix) => self
                    .parse_key_prefix(prefix)
                    .map(|p| targets.prefixes.push(p)),
                None => self.parse_key(raw).map(|key| targets.keys.push(key)),
            };
            if let Err(response) = named {
                return *response;
            }
        } else if let Some(proxy) = &self.proxy {
            // A proxied URL: its cached response (every variant of it); a path
            // ending in `*`: every URL of the host under the rest.
            match proxy.purge_target_of(req) {
                Ok(PurgeTarget::Key(key)) => targets.keys.push(key),
                Ok(PurgeTarget::Prefix(prefix)) => targets.prefixes.push(prefix),
                Err(reason) => return text(StatusCode::BAD_REQUEST, reason),
            }
        }
        if targets.is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "PURGE needs a Surrogate-Key header, a {}{{key}} path (or {}{{prefix}}*), or a proxied URL (or a path ending in *)",
                    self.limits.prefix, self.limits.prefix
                ),
            );
        }
        self.purger.run(&targets, Wait::All, "PURGE").await
    }
}

/// The response to a KV read answered from this node's store.
fn hit_response(
    hit: &crate::cache::Hit,
    cache_status: &CacheStatus,
    method: &Method,
    request: &HeaderMap,
) -> Response<Body> {
    entry_response(hit.entry(), hit.age_secs, cache_status, method, request)
}

/// The response to a KV read of `entry`: 304 for a matching `If-None-Match`, else
/// the value or the byte range asked for (`http::range`), headers only for HEAD.
fn entry_response(
    entry: &Entry,
    age_secs: u64,
    cache_status: &CacheStatus,
    method: &Method,
    request: &HeaderMap,
) -> Response<Body> {
    let etag = etag(&entry.meta);
    let etag_str = etag.to_str().unwrap_or_default();
    let (status, body, content_range) = if headers::if_none_match(request, etag_str) {
        (StatusCode::NOT_MODIFIED, Bytes::new(), None)
    } else {
        range::apply(request, &entry.body, Some(etag_str))
    };
    // HEAD carries the length of the body a GET would get.
    let length = body.len();
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        body
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    if status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT {
        if let Some(ct) = entry
            .meta
            .header("content-type")
            .and_then(|v| HeaderValue::from_bytes(v).ok())
        {
            h.insert(header::CONTENT_TYPE, ct);
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if let Some(content_range) = content_range {
        h.insert(header::CONTENT_RANGE, content_range);
    }
    h.insert(header::AGE, HeaderValue::from(age_secs));
    h.insert(header::ETAG, etag);
    // With Age, how long a client (a near cache) may keep it.
    insert_str(
        h,
        header::CACHE_CONTROL,
        &format!("max-age={}", entry.meta.ttl_ms / 1000),
    );
    if !entry.meta.tags.is_empty() {
        // Tags were validated as header tokens when the value was written.
        let tags = entry.meta.tags.join(&b' ');
        if let Ok(v) = HeaderValue::from_bytes(&tags) {
            h.insert("surrogate-key", v);
        }
    }
    h.insert("cache-status", cache_status.header_value());
    response
}

/// `Cache-Status` for a KV hit: fresh (with the tier that answered) or stale.
fn hit_status(freshness: Freshness, tier: Tier) -> CacheStatus {
    match freshness {
        Freshness::Fresh { ttl_ms } => {
            CacheStatus::hit((ttl_ms / 1000) as i64).detail(match tier {
                Tier::Memory => "memory",
                Tier::Disk => "disk",
            })
        }
        Freshness::Stale { stale_ms } => CacheStatus::hit(0)
            .stale_for(stale_ms.div_ceil(1000))
            .detail("stale"),
    }
}

/// `Cache-Status` for a KV miss.
fn miss_status(reason: MissReason) -> CacheStatus {
    match reason {
        MissReason::Absent => CacheStatus::forward(Fwd::UriMiss),
        MissReason::Expired => CacheStatus::forward(Fwd::Miss).detail("expired"),
        MissReason::Invalidated => CacheStatus::forward(Fwd::Miss).detail("invalidated"),
    }
}

/// What a KV write did.
#[derive(Debug)]
pub struct Written {
    /// The value's ETag (its version).
    pub etag: HeaderValue,
    /// What storing it here did, when this node owns the key (else it was written
    /// to the owners only).
    pub here: Option<SetOutcome>,
    /// How many of the key's other owners stored it, of how many asked.
    pub done: usize,
    /// See `done`.
    pub asked: usize,
}

/// Why a KV write or delete was not made; nothing was written.
#[derive(Debug)]
pub enum Refused {
    /// This node may not be in sync with the cluster: why.
    OutOfSync(String),
    /// A precondition does not hold for the key's current value: which, and that
    /// value's ETag.
    Precondition {
        /// The precondition (`If-Match`, `If-None-Match`, `NX`, `XX`).
        which: &'static str,
        /// The current value's ETag, if there is one.
        current: Option<HeaderValue>,
    },
    /// A conditional write in a cluster: not supported yet.
    ConditionalInCluster,
    /// Not every member applied the overwrite or was fenced in time.
    Unconfirmed {
        /// Owners that stored it, this node included.
        written: usize,
        /// Owners asked, this node included.
        owners: usize,
    },
    /// This node is not an owner and no owner could be reached.
    NoOwner {
        /// Owners asked.
        asked: usize,
    },
    /// The value does not fit the store.
    TooLong(String),
    /// The store or the invalidation log failed: what happened.
    Failed(String),
}

impl Refused {
    /// The HTTP status that says it, and the reason in words.
    pub fn status_and_reason(&self) -> (StatusCode, Cow<'static, str>) {
        match self {
            Refused::OutOfSync(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("this node may not be in sync with the cluster ({why}): write through another node").into(),
            ),
            Refused::Precondition { which, .. } => (
                StatusCode::PRECONDITION_FAILED,
                format!("{which} does not hold for the key's current value: nothing written").into(),
            ),
            Refused::ConditionalInCluster => (
                StatusCode::NOT_IMPLEMENTED,
                "conditional writes (If-Match, If-None-Match, NX, XX) are evaluated on a node on its own; in a cluster they are not supported yet: nothing written".into(),
            ),
            Refused::Unconfirmed { written, owners } => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("written to {written} of {owners} owners; the others could not be reached or fenced in time and may serve the old value").into(),
            ),
            Refused::NoOwner { asked } => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no owner of the key could be reached ({asked} asked)").into(),
            ),
            Refused::TooLong(why) => (StatusCode::PAYLOAD_TOO_LARGE, why.clone().into()),
            Refused::Failed(why) => (StatusCode::SERVICE_UNAVAILABLE, why.clone().into()),
        }
    }
}

/// The HTTP answer to a refused write: its status and reason, with the current
/// ETag after a failed precondition and `Fanz-Written: 0/asked` when no owner was
/// reached.
fn refused_response(refused: Refused) -> Response<Body> {
    let (status, reason) = refused.status_and_reason();
    let mut r = text(status, reason.into_owned());
    match refused {
        Refused::Precondition {
            current: Some(etag),
            ..
        } => {
            r.headers_mut().insert(header::ETAG, etag);
        }
        Refused::NoOwner { asked } => {
            insert_str(r.headers_mut(), FANZ_WRITTEN, &format!("0/{asked}"));
        }
        _ => {}
    }
    r
}

/// The HTTP answer to a write: 201 for a new value or 204 for one that replaced a
/// usable value, with its ETag and `Fanz-Invalidated`, when stored here; 204 when
/// written to the owners only. `Fanz-Written: done/asked` says how many owners
/// stored it, in a cluster.
fn written_response(written: Written) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    let (done, asked) = match &written.here {
        Some(outcome) => {
            *r.status_mut() = if outcome.replaced_usable {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::CREATED
            };
            r.headers_mut().insert(
                FANZ_INVALIDATED,
                HeaderValue::from(outcome.dependents.len()),
            );
            (written.done + 1, written.asked + 1)
        }
        None => {
            *r.status_mut() = StatusCode::NO_CONTENT;
            (written.done, written.asked)
        }
    };
    r.headers_mut().insert(header::ETAG, written.etag);
    if written.asked > 0 || written.here.is_none() {
        insert_str(r.headers_mut(), FANZ_WRITTEN, &format!("{done}/{asked}"));
    }
    r
}

/// The ETag of an entry: its version, unique per write, in quoted lower-case hex
/// (formatted without `fmt`: every hit and write sends one).
fn etag(meta: &EntryMeta) -> HeaderValue {
    let version = meta.version.as_u64();
    let digits = (64 - version.leading_zeros() as usize).div_ceil(4).max(1);
    let mut quoted = [b'"'; 18];
    hex_into(&mut quoted[1..=digits], u128::from(version));
    HeaderValue::from_bytes(&quoted[..digits + 2]).expect("hex digits and quotes")
}

fn insert_str(h: &mut HeaderMap, name: impl header::IntoHeaderName, value: &str) {
    // Every value passed here is built from ASCII digits, hex and fixed words.
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanz_protocol::hlc::Timestamp;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn an_etag_is_the_version_in_quoted_lower_case_hex(version: u64) {
            let meta = EntryMeta { version: Timestamp::from_u64(version), ..EntryMeta::default() };
            let expected = format!("\"{version:x}\"");
            prop_assert_eq!(etag(&meta), expected.as_str());
        }
    }

    #[test]
    fn the_smallest_and_largest_versions_make_etags() {
        for (version, expected) in [
            (0, "\"0\""),
            (0xf, "\"f\""),
            (0x10, "\"10\""),
            (u64::MAX, "\"ffffffffffffffff\""),
        ] {
            let meta = EntryMeta {
                version: Timestamp::from_u64(version),
                ..EntryMeta::default()
            };
            assert_eq!(etag(&meta), expected);
        }
    }
}
