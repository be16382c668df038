//! Fetching from the origin for the cache: the leader's request (with the stale
//! entry's validators when revalidating), the decision to store, the body pump that
//! feeds the flight and stores the entry, and the tags a response carries.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fanz_protocol::{CacheKey, Entry, EntryMeta, InvalidationId, Timestamp};
use http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;

use super::flight::{Failure, Leader, SharedHead};
use super::key::{marker, variant_dependency, variant_key};
use super::origin::OriginError;
use super::policy::{vary_fields, Storable};
use super::respond::Shaping;
use crate::cache::Cache;
use crate::http::headers::{depends_on, validate_tag};
use crate::http::Body;

/// A client's validators on a GET: answered by the cache from what it stores, or
/// sent on to the origin when nothing is stored.
pub const CLIENT_VALIDATORS: &[header::HeaderName] = &[
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// Request headers asking for part of a response: the cache fetches whole ones.
pub const PARTIAL: &[header::HeaderName] = &[header::IF_RANGE, header::RANGE];

/// Request headers that make a response conditional or partial: the cache asks the
/// origin for whole responses and answers the client's conditionals itself.
pub const CLIENT_CONDITIONALS: &[header::HeaderName] = &[
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// Adds the stored response's validators to a revalidation request.
pub fn add_validators(headers: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stored.get(header::LAST_MODIFIED) {
        headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

/// Tags of a response: `Surrogate-Key` (space-separated), `Cache-Tag`
/// (comma-separated) and `Cache-Groups` (RFC 9875: a list of quoted strings).
/// Invalid tags are skipped, not fatal.
pub fn response_tags(headers: &HeaderMap) -> Vec<Bytes> {
    let values = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let mut tags: Vec<String> = Vec::new();
    for v in values("surrogate-key") {
        tags.extend(v.split_ascii_whitespace().map(str::to_string));
    }
    for v in values("cache-tag") {
        tags.extend(v.split(',').map(|t| t.trim().to_string()));
    }
    tags.extend(group_list(headers, "cache-groups"));
    let mut tags: Vec<Bytes> = tags
        .into_iter()
        .filter(|t| match validate_tag(t) {
            Ok(()) => true,
            Err(reason) => {
                tracing::debug!(%reason, "skipping an invalid tag from the origin");
                false
            }
        })
        .map(Bytes::from)
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

/// The strings of an RFC 9875 group list field (`"a", "b"`); other members are
/// skipped.
pub fn group_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    crate::http::headers::list_members(headers, name)
        .filter(|t| t.len() >= 2 && t.starts_with('"') && t.ends_with('"'))
        .map(|t| t[1..t.len() - 1].to_string())
        .collect()
}

/// The KV keys and tags an origin response says it was built from
/// (`Fanz-Depends-On`, as a KV value declares them): purging or overwriting any of
/// them invalidates the stored response. An invalid declaration is ignored (with a
/// log line): the response is still served and stored, without it.
pub fn declared_dependencies(response: &HeaderMap) -> Vec<InvalidationId> {
    match depends_on(response, MAX_DEPENDENCY_KEY) {
        Ok(deps) => deps,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an origin's invalid Fanz-Depends-On");
            Vec::new()
        }
    }
}

/// Longest KV key an origin may declare a dependency on (the KV API's default
/// `max_key_size`).
const MAX_DEPENDENCY_KEY: usize = 8 * 1024;

/// Where a response to `request` is stored (the variant's key when it varies on
/// `fields`) and what it depends on (its URL when it is a variant; what the origin
/// declared).
fn placement(
    primary: &CacheKey,
    request: &HeaderMap,
    response: &HeaderMap,
    fields: &[String],
) -> (CacheKey, Vec<InvalidationId>) {
    let (key, mut depends_on) = if fields.is_empty() {
        (primary.clone(), Vec::new())
    } else {
        (
            variant_key(primary, fields, request),
            vec![variant_dependency(primary)],
        )
    };
    depends_on.extend(declared_dependencies(response));
    (key, depends_on)
}

/// Header on a response to a peer's fetch: the version (HLC) of the entry it
/// comes from. The asking node stores the response no newer than that, so a copy
/// a purge covers stays covered wherever it travels.
pub const PEER_VERSION: header::HeaderName = header::HeaderName::from_static("fanz-version");

/// The version an owner gave its answer ([`PEER_VERSION`]), removed from `response`.
pub fn take_peer_version(response: &mut HeaderMap) -> Option<Timestamp> {
    let value = response.remove(PEER_VERSION)?;
    value.to_str().ok()?.parse().ok().map(Timestamp::from_u64)
}

/// Whether a purge applied here covers `response` (to `request`) as an entry of
/// `version`: an owner that had not applied the purge yet answered from its old copy.
pub fn covered_here(
    cache: &Cache,
    (primary, key_fields): (&CacheKey, &[String]),
    request: &HeaderMap,
    response: &HeaderMap,
    version: Timestamp,
) -> bool {
    let fields = variant_fields(response, key_fields);
    let (key, depends_on) = placement(primary, request, response, &fields);
    let meta = EntryMeta {
        version,
        tags: response_tags(response),
        depends_on,
        ..EntryMeta::default()
    };
    cache.covered(&key, &meta)
}

/// What tells a URL's stored copies apart: the response's `Vary` fields and a
/// rule's `key_headers`/`key_cookies` (`key_fields`), sorted, once each.
fn variant_fields(response: &HeaderMap, key_fields: &[String]) -> Vec<String> {
    let mut fields = vary_fields(response);
    if !key_fields.is_empty() {
        fields.extend(key_fields.iter().cloned());
        fields.sort();
        fields.dedup();
    }
    fields
}

/// What to store for a storable response.
#[derive(Debug)]
pub struct Plan {
    /// Key the response is stored under (the variant's when it varies).
    pub store_key: CacheKey,
    /// The marker to store at the primary key, when the response varies.
    pub marker: Option<(CacheKey, Entry)>,
    /// Metadata of the entry (body to come).
    pub meta: EntryMeta,
    /// Head shared with the flight.
    pub head: Arc<SharedHead>,
}

/// Plans the entry for a storable response.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    shaping: &Shaping,
    (primary, key_fields): (&CacheKey, &[String]),
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    storable: &Storable,
    version: Timestamp,
    now_ms: u64,
) -> Plan {
    let stored = shaping.storable_headers(response, &storable.strip_fields);
    let fields = variant_fields(response, key_fields);
    let usable_ms = storable.lifetime_ms
        + storable
            .stale_while_revalidate_ms
            .max(storable.stale_if_error_ms);
    let (store_key, depends_on) = placement(primary, request, response, &fields);
    let marker =
        (!fields.is_empty()).then(|| (primary.clone(), marker(&fields, version, usable_ms)));
    let meta = EntryMeta {
        version,
        born_ms: storable.born_ms,
        ttl_ms: storable.lifetime_ms,
        stale_while_revalidate_ms: storable.stale_while_revalidate_ms,
        stale_if_error_ms: storable.stale_if_error_ms,
        status: status.as_u16(),
        headers: stored
            .iter()
            .map(|(n, v)| {
                (
                    Bytes::copy_from_slice(n.as_str().as_bytes()),
                    Bytes::copy_from_slice(v.as_bytes()),
                )
            })
            .collect(),
        tags: response_tags(response),
        depends_on,
    };
    let ttl_secs = (meta.fresh_until_ms() as i64 - now_ms as i64) / 1000;
    let head = Arc::new(SharedHead {
        status,
        headers: stored,
        ttl_secs,
        born_ms: storable.born_ms,
        vary: (!fields.is_empty()).then(|| (fields, request.clone())),
        version,
    });
    Plan {
        store_key,
        marker,
        meta,
        head,
    }
}

/// Reads the origin body into the flight (every waiting client streams it from
/// there) and stores the entry once it is complete. A body cut off or late is never
/// stored, and the flight's clients see it end in an error. A body that grows past
/// the size limit is not stored either, but streams on to the clients that have it.
#[allow(clippy::too_many_arguments)]
pub async fn pump(
    cache: Arc<Cache>,
    leader: Leader,
    mut body: Body,
    permit: Option<OwnedSemaphorePermit>,
    plan: Plan,
    max_object_size: u64,
    total_timeout: Duration,
) {
    let flight = leader.flight().clone();
    let deadline = tokio::time::Instant::now() + total_timeout;
    let mut buf = BytesMut::new();
    let mut storing = true;
    // The newest chunk is held back until the next one arrives, and the last one until
    // the entry is stored: a client that has the whole body (it knows the length) can
    // count on finding the entry when it asks again.
    let mut held: Option<Bytes> = None;
    let outcome: Result<(), String> = loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => break Err(format!("origin body not complete within {total_timeout:?}")),
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(format!("origin body failed: {e}")),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if storing && (buf.len() + data.len()) as u64 > max_object_size {
                        // Too large to store: stream on without keeping it.
                        storing = false;
                        buf = BytesMut::new();
                        flight.drop_replay();
                        leader.stop_joining();
                        tracing::debug!(key = ?plan.store_key, "response over max_object_size: passing it through");
                    }
                    if storing {
                        buf.extend_from_slice(&data);
                    }
                    if let Some(previous) = held.replace(data) {
                        flight.push(previous).await;
                    }
                }
            }
        }
    };
    drop(permit);
    if let Err(e) = outcome {
        tracing::warn!(key = ?plan.store_key, error = %e, "origin response not stored");
        if let Some(last) = held {
            flight.push(last).await;
        }
        flight.finish(Err(e.into())).await;
        leader.complete();
        return;
    }
    if storing {
        if let Some((primary, marker)) = plan.marker {
            if let Err(e) = cache.store_response(primary, marker).await {
                tracing::error!(error = %e, "storing a Vary marker failed");
            }
        }
        let entry = Entry {
            meta: plan.meta,
            body: buf.freeze(),
        };
        if let Err(e) = cache.store_response(plan.store_key, entry).await {
            tracing::error!(error = %e, "storing a response failed");
        }
    }
    // Stored (or not storable): later requests look up the cache, not this flight.
    leader.stop_joining();
    if let Some(last) = held {
        flight.push(last).await;
    }
    flight.finish(Ok(())).await;
    leader.complete();
}

/// The failure to answer for an origin error.
pub fn failure(e: &OriginError) -> Failure {
    Failure {
        status: e.status(),
        message: e.to_string().into(),
        retry_after: e.retry_after_secs(),
        origin_unavailable: matches!(e, OriginError::BreakerOpen { .. } | OriginError::Busy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    // An origin's invalid Fanz-Depends-On is ignored (logged), not fatal: the
    // response is stored without it.
    #[test]
    fn an_invalid_dependency_declaration_is_ignored() {
        let mut h = HeaderMap::new();
        h.insert("fanz-depends-on", HeaderValue::from_static("price:42 tag:"));
        assert!(declared_dependencies(&h).is_empty());
        h.insert(
            "fanz-depends-on",
            HeaderValue::from_static("price:42 tag:prices"),
        );
        assert_eq!(declared_dependencies(&h).len(), 2);
    }

    #[test]
    fn tags_from_all_three_headers() {
        let mut h = HeaderMap::new();
        h.append("surrogate-key", HeaderValue::from_static("a b"));
        h.append("cache-tag", HeaderValue::from_static("c, d"));
        h.append(
            "cache-groups",
            HeaderValue::from_static("\"e\", \"f g\", token"),
        );
        let tags: Vec<String> = response_tags(&h)
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect();
        assert_eq!(
            tags,
            vec!["a", "b", "c", "d", "e"],
            "\"f g\" has a space: not a valid tag; tokens are not strings"
        );
    }
}
