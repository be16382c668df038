//! What one request brings to the flow: its facts gathered once (`Ctx`), the
//! directives of its own `Cache-Control`, and whose validators a fill sends.

use std::net::IpAddr;
use std::sync::Arc;

use fanz_protocol::CacheKey;
use http::{header, HeaderMap, Method};

use super::super::fill;
use super::super::key::Target;
use super::super::origin::Origin;
use super::super::policy::RequestFacts;
use crate::config::rules::Rule;
use crate::http::directives::Directives;

/// Tells a peer that fetched through this node the version of the entry it is
/// answered from ([`fill::PEER_VERSION`]).
pub(super) fn tell_peer_version(
    ctx: &Ctx,
    headers: &mut HeaderMap,
    version: fanz_protocol::Timestamp,
) {
    if ctx.from_peer {
        headers.insert(
            fill::PEER_VERSION,
            http::HeaderValue::from(version.as_u64()),
        );
    }
}

/// What a GET or HEAD asks of the cache in its own `Cache-Control` (and `Pragma`).
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestDirectives {
    pub(super) facts: RequestFacts,
    /// `no-cache`: a stored response must be revalidated before it is used.
    pub(super) must_revalidate: bool,
    /// `max-age`: a stored response older than this (seconds) is revalidated.
    pub(super) max_age: Option<u64>,
    /// `min-fresh`: a stored response fresh for less than this (seconds) is revalidated.
    pub(super) min_fresh: Option<u64>,
    /// `only-if-cached`: answered from the cache or with 504, never from the origin.
    pub(super) only_if_cached: bool,
}

impl RequestDirectives {
    pub(super) fn of(headers: &HeaderMap) -> RequestDirectives {
        let cc = Directives::parse(
            headers
                .get_all(header::CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        )
        .unwrap_or_default();
        let must_revalidate = cc.has("no-cache")
            || (cc.is_empty()
                && headers
                    .get(header::PRAGMA)
                    .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"no-cache")));
        RequestDirectives {
            facts: RequestFacts {
                authorization: headers.contains_key(header::AUTHORIZATION),
                no_store: cc.has("no-store"),
            },
            must_revalidate,
            // An invalid value is ignored, as an unknown directive would be.
            max_age: cc.seconds("max-age").ok().flatten(),
            min_fresh: cc.seconds("min-fresh").ok().flatten(),
            only_if_cached: cc.has("only-if-cached"),
        }
    }
}

/// Whose validators a fill sends to the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Conditionals {
    /// The stored entry's, if any; the client's are removed (the fill is shared, or
    /// revalidates what is stored).
    Stored,
    /// The client's own (a fetch alone, with nothing stored).
    Client,
}

/// One request's facts, gathered once.
#[derive(Debug, Clone)]
pub(super) struct Ctx {
    pub(super) method: Method,
    pub(super) headers: HeaderMap,
    pub(super) target: Target,
    pub(super) origin: Arc<Origin>,
    pub(super) client: IpAddr,
    pub(super) primary: CacheKey,
    /// Asked by another node over the peer protocol: never routed on to a peer
    /// again, and tag headers kept (the asking node indexes them).
    pub(super) from_peer: bool,
    /// The operator's rule that applies, if one does.
    pub(super) rule: Option<Arc<Rule>>,
}

impl Ctx {
    /// An operator's rule says never to cache it.
    pub(super) fn bypass(&self) -> bool {
        self.rule.as_ref().is_some_and(|r| r.bypass)
    }

    /// What besides the URL its rule adds to the cache key (none without a rule).
    pub(super) fn key_fields(&self) -> &[String] {
        self.rule.as_ref().map_or(&[], |r| &r.key_fields)
    }
}
