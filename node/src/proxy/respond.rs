//! Building client responses: from a stored entry (with `Age`, conditional requests
//! and HEAD), from an origin response passed through, and the `Cache-Status` values.

use bytes::Bytes;
use fanz_protocol::EntryMeta;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::origin::strip_hop_by_hop;
use crate::http::cache_status::CacheStatus;
use crate::http::range;
use crate::http::{full, text, Body};

/// Response headers aimed at this cache, never passed on to clients.
const FOR_THIS_CACHE: &[&str] = &["cdn-cache-control", "surrogate-control"];
/// Response headers carrying tags and dependencies, removed from client responses
/// unless configured (peers get them: they store what the owner stores).
const TAG_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("surrogate-key"),
    HeaderName::from_static("cache-tag"),
    HeaderName::from_static("fanz-depends-on"),
];
/// RFC 9211 `Cache-Status`.
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// How responses are shaped for clients.
#[derive(Debug, Clone, Copy)]
pub struct Shaping {
    /// Remove tag headers.
    pub strip_tags: bool,
}

impl Shaping {
    /// Headers of an origin response as they are stored (and then sent): no
    /// hop-by-hop fields, nothing aimed at this cache, none of `strip_fields`, no `Age`.
    pub fn storable_headers(&self, origin: &HeaderMap, strip_fields: &[String]) -> HeaderMap {
        let mut h = origin.clone();
        strip_hop_by_hop(&mut h);
        for name in FOR_THIS_CACHE
            .iter()
            .copied()
            .chain(strip_fields.iter().map(String::as_str))
        {
            h.remove(name);
        }
        h.remove(header::AGE);
        h
    }

    /// Finishes client headers: tags removed if configured, `Age` and `Cache-Status` set.
    pub fn client_headers(
        &self,
        headers: &mut HeaderMap,
        age_secs: Option<u64>,
        cache_status: &CacheStatus,
    ) {
        if self.strip_tags {
            for name in &TAG_HEADERS {
                headers.remove(name);
            }
        }
        if let Some(age) = age_secs {
            headers.insert(header::AGE, HeaderValue::from(age));
        }
        headers.insert(CACHE_STATUS, cache_status.header_value());
    }

    /// A response from a stored entry, answering the request's conditionals and HEAD.
    pub fn entry_response(
        &self,
        method: &Method,
        request: &HeaderMap,
        meta: &EntryMeta,
        body: &Bytes,
        age_secs: u64,
        cache_status: &CacheStatus,
    ) -> Response<Body> {
        let mut headers = stored_headers(meta);
        let status = StatusCode::from_u16(meta.status).unwrap_or(StatusCode::OK);
        let not_modified = status == StatusCode::OK && not_modified(request, &headers);
        let (status, slice) = if status == StatusCode::OK && !not_modified {
            let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok());
            let (status, slice, content_range) = range::apply(request, body, etag);
            if let Some(v) = content_range {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (status, slice)
        } else {
            (status, body.clone())
        };
        if not_modified {
            headers.remove(header::CONTENT_LENGTH);
            headers.remove(header::CONTENT_TYPE);
        } else {
            // HEAD carries the length of the body a GET would get.
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(slice.len()));
        }
        if status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT {
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
        let body = if not_modified || method == Method::HEAD {
            full(Bytes::new())
        } else {
            full(slice)
        };
        self.client_headers(&mut headers, Some(age_secs), cache_status);
        let mut response = Response::new(body);
        *response.status_mut() = if not_modified {
            StatusCode::NOT_MODIFIED
        } else {
            status
        };
        *response.headers_mut() = headers;
        response
    }

    /// An origin response passed through to the client (not stored); a HEAD gets no body.
    pub fn pass_through(
        &self,
        method: &Method,
        mut parts: http::response::Parts,
        body: Body,
        cache_status: &CacheStatus,
    ) -> Response<Body> {
        let mut headers = self.storable_headers(&parts.headers, &[]);
        self.client_headers(&mut headers, None, cache_status);
        parts.headers = headers;
        let body = if method == Method::HEAD {
            full(Bytes::new())
        } else {
            body
        };
        Response::from_parts(parts, body)
    }
}

/// The stored headers of an entry as a map; the values share the entry's bytes.
pub fn stored_headers(meta: &EntryMeta) -> HeaderMap {
    // Room for what a response from the cache adds (Age, Cache-Status, ...).
    let mut h = HeaderMap::with_capacity(meta.headers.len() + 4);
    for (name, value) in &meta.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(value.clone()),
        ) {
            h.append(n, v);
        }
    }
    h
}

/// RFC 9110 §13.2.2: `If-None-Match` first; `If-Modified-Since` only without it.
fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let etag = stored.get(header::ETAG).and_then(|v| v.to_str().ok());
        return etag.is_some_and(|e| crate::http::headers::if_none_match(request, e));
    }
    let Some(since) = super::policy::http_date(request, header::IF_MODIFIED_SINCE) else {
        return false;
    };
    super::policy::http_date(stored, header::LAST_MODIFIED).is_some_and(|m| m <= since)
}

/// A response for an origin failure: `Retry-After` where useful.
pub fn origin_failure(
    status: StatusCode,
    message: &str,
    retry_after: Option<u64>,
    cache_status: &CacheStatus,
) -> Response<Body> {
    let mut response = text(status, message);
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
        .headers_mut()
        .insert(CACHE_STATUS, cache_status.header_value());
    response
}
