//! RFC 9111 rules for a shared cache, as pure functions of a request, a response and
//! times: whether a response may be stored (§3), its freshness lifetime (§4.2.1, with
//! `CDN-Cache-Control` (RFC 9213) and `Surrogate-Control` taking precedence for this
//! cache), heuristic freshness (§4.2.2), its age (§4.2.3), and its stale windows
//! (RFC 5861).

use http::{header, HeaderMap, Method, StatusCode};

use crate::http::directives::Directives;

/// Status codes this cache may cache heuristically (RFC 9110 §15.1).
const HEURISTICALLY_CACHEABLE: &[u16] =
    &[200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Status codes whose caching semantics this cache implements beyond those (for
/// `must-understand`, §5.2.2.3).
const UNDERSTOOD: &[u16] = &[302, 303, 307, 451];

/// Whether a response with this status may be stored at all: any final status
/// (RFC 9111 §3), except 304, which only refreshes a stored response (§4.3.4), and
/// 206: this cache asks origins for whole responses and stores only complete ones
/// (§3.3 allows it not to store partial content; ranges are cut from whole objects).
/// Statuses outside [`HEURISTICALLY_CACHEABLE`] need explicit freshness.
fn storable_status(code: u16) -> bool {
    (200..=599).contains(&code) && code != 304 && code != 206
}

/// An `Age` value (RFC 9111 §5.1) in seconds: delta-seconds, saturating at 2^31
/// (§1.2.2); `None` for an invalid one (several values, a sign, a fraction, no
/// digits), which is ignored.
pub fn age_seconds(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::AGE).iter();
    let value = values.next()?.to_str().ok()?.trim();
    if values.next().is_some() || value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.parse::<u64>().unwrap_or(u64::MAX).min(1 << 31))
}

/// Limits of heuristic freshness.
#[derive(Debug, Clone, Copy)]
pub struct Heuristics {
    /// Fraction of the time since Last-Modified (RFC 9111 suggests 10%).
    pub fraction: f64,
    /// Upper bound on a heuristic lifetime.
    pub max_ms: u64,
}

impl Default for Heuristics {
    fn default() -> Self {
        Self {
            fraction: 0.1,
            max_ms: 86_400_000,
        }
    }
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Only GET responses are stored.
    Method,
    /// A status code this cache does not store.
    Status,
    /// `no-store` in the request or the response (or its targeted field).
    NoStore,
    /// `private`: only a private cache may store it.
    Private,
    /// The request had `Authorization` and the response did not allow sharing it (§3.5).
    Authorization,
    /// `Set-Cookie` without an explicit permission to share it.
    SetCookie,
    /// `Vary: *`: no request can be matched to it.
    VaryStar,
    /// No explicit freshness and no heuristic allowed.
    NoFreshness,
    /// The response's caching headers could not be parsed.
    Malformed,
}

/// Whether an operator's rule may have a response with `status` stored: any final
/// status but a partial response (206) and a not-modified one (304).
pub fn storable_by_rule(status: u16) -> bool {
    (200..=599).contains(&status) && status != 206 && status != 304
}

impl NotStored {
    /// Whether an operator's lifetime may store the response anyway: the reason is
    /// about how long it may be kept (or its status), not whose it is (`private`,
    /// `Set-Cookie`, `Authorization`) or whether it can be matched (`Vary: *`).
    pub fn overridable(self) -> bool {
        matches!(
            self,
            NotStored::Status | NotStored::NoStore | NotStored::NoFreshness | NotStored::Malformed
        )
    }

    /// Short name, for logs and `Cache-Status` details.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Status => "status",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::SetCookie => "set-cookie",
            NotStored::VaryStar => "vary-star",
            NotStored::NoFreshness => "no-freshness",
            NotStored::Malformed => "malformed",
        }
    }
}

/// What this cache may do with a response it is allowed to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storable {
    /// Freshness lifetime, ms (0: stale at once; with `no-cache`, always revalidate).
    pub lifetime_ms: u64,
    /// Whether the lifetime came from the heuristic.
    pub heuristic: bool,
    /// When the content was new: response time less its corrected initial age.
    pub born_ms: u64,
    /// `stale-while-revalidate` window, ms (0 when stale serving is forbidden).
    pub stale_while_revalidate_ms: u64,
    /// `stale-if-error` window, ms (0 when stale serving is forbidden).
    pub stale_if_error_ms: u64,
    /// `no-cache`: store, but revalidate before every use.
    pub no_cache: bool,
    /// Response fields that must not be stored (`private="..."`, `no-cache="..."`).
    pub strip_fields: Vec<String>,
}

impl Storable {
    /// The same response with an operator's lifetime (a rule's `ttl`) in place of
    /// its own: fresh for `lifetime_ms` from its birth, revalidated only once stale.
    pub fn with_lifetime(mut self, lifetime_ms: u64) -> Self {
        self.lifetime_ms = lifetime_ms;
        self.heuristic = false;
        self.no_cache = false;
        self
    }

    /// The same response served stale for at least `grace_ms` when the origin fails
    /// (a rule's `grace`), unless its `headers` forbid serving it stale.
    pub fn with_grace(mut self, grace_ms: u64, headers: &HeaderMap) -> Self {
        if !forbids_stale(headers) {
            self.stale_if_error_ms = self.stale_if_error_ms.max(grace_ms);
        }
        self
    }

    /// A response the origin's headers would not have this cache store, stored for
    /// `lifetime_ms` because an operator's rule says so (born when it arrived).
    pub fn forced(lifetime_ms: u64, response_ms: u64) -> Self {
        Self {
            lifetime_ms,
            heuristic: false,
            born_ms: response_ms,
            stale_while_revalidate_ms: 0,
            stale_if_error_ms: 0,
            no_cache: false,
            strip_fields: Vec::new(),
        }
    }

    /// The same response with its lifetime no longer than `max_ttl_ms` and its stale
    /// windows no longer than `max_stale_ms`: tombstones are kept only that long, so
    /// an origin's year-long `max-age` must not outlive the purge that covers it.
    pub fn within(mut self, max_ttl_ms: u64, max_stale_ms: u64) -> Self {
        self.lifetime_ms = self.lifetime_ms.min(max_ttl_ms);
        self.stale_while_revalidate_ms = self.stale_while_revalidate_ms.min(max_stale_ms);
        self.stale_if_error_ms = self.stale_if_error_ms.min(max_stale_ms);
        self
    }
}

/// The directives that govern this cache's storing and freshness: the targeted field
/// (`CDN-Cache-Control`, then `Surrogate-Control`) when present, otherwise
/// `Cache-Control`; plus whether `Expires` still counts.
#[derive(Debug)]
pub struct Governing {
    /// The directives.
    pub directives: Directives,
    /// Whether they came from a targeted field (then `Expires` is ignored, RFC 9213 §2.2).
    pub targeted: bool,
}

/// Picks the governing directives of a response.
pub fn governing(headers: &HeaderMap) -> Result<Governing, NotStored> {
    for name in ["cdn-cache-control", "surrogate-control"] {
        if headers.contains_key(name) {
            let directives = Directives::parse(field_values(headers, name)?)
                .map_err(|_| NotStored::Malformed)?;
            return Ok(Governing {
                directives,
                targeted: true,
            });
        }
    }
    Ok(Governing {
        directives: cache_control(headers)?,
        targeted: false,
    })
}

fn field_values<'a>(headers: &'a HeaderMap, name: &str) -> Result<Vec<&'a str>, NotStored> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().map_err(|_| NotStored::Malformed))
        .collect()
}

/// Whether a response's directives forbid serving it stale (`must-revalidate`,
/// `proxy-revalidate`, an unqualified `no-cache`), in its governing field or in
/// `Cache-Control`. A response whose headers cannot be read counts as forbidding it.
pub fn forbids_stale(headers: &HeaderMap) -> bool {
    either_field(headers, true, |x| {
        x.has("must-revalidate")
            || x.has("proxy-revalidate")
            || (x.has("no-cache") && x.arg("no-cache").is_none())
    })
}

/// `Cache-Control`, parsed.
fn cache_control(headers: &HeaderMap) -> Result<Directives, NotStored> {
    Directives::parse(field_values(headers, "cache-control")?).map_err(|_| NotStored::Malformed)
}

/// Whether `test` holds for the governing directives or for `Cache-Control`;
/// `unreadable` when either cannot be parsed.
fn either_field(headers: &HeaderMap, unreadable: bool, test: impl Fn(&Directives) -> bool) -> bool {
    match (governing(headers), cache_control(headers)) {
        (Ok(g), Ok(cc)) => test(&g.directives) || test(&cc),
        _ => unreadable,
    }
}

/// Whether a stored response may not be served stale when the origin cannot be
/// asked (breaker open, RFC 9111 §4.2.4): what [`forbids_stale`] forbids, and also
/// `s-maxage`, which implies `proxy-revalidate` for a shared cache (§5.2.2.10). Its
/// own `stale-if-error` window, an explicit permission, is checked before this.
pub fn forbids_stale_when_disconnected(headers: &HeaderMap) -> bool {
    forbids_stale(headers) || either_field(headers, true, |x| x.has("s-maxage"))
}

/// §3.5: whether a response's directives let a shared cache store it, and serve it,
/// although requests for it carry `Authorization`: `public`, `s-maxage` or
/// `must-revalidate`.
fn shares_despite_authorization(x: &Directives) -> bool {
    x.has("public") || x.has("s-maxage") || x.has("must-revalidate")
}

/// [`shares_despite_authorization`] for a stored response's headers, in its
/// governing field or `Cache-Control`.
pub fn stored_response_shared_despite_authorization(headers: &HeaderMap) -> bool {
    either_field(headers, false, shares_despite_authorization)
}

/// The request side of the decision.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts {
    /// Whether the request carried `Authorization`.
    pub authorization: bool,
    /// Whether the request said `Cache-Control: no-store`.
    pub no_store: bool,
}

/// Decides whether a response to a GET may be stored, and for how long it is fresh.
/// `request_ms` and `response_ms` are when the request was sent and the response
/// arrived (wall clock).
pub fn evaluate(
    method: &Method,
    request: RequestFacts,
    status: StatusCode,
    headers: &HeaderMap,
    request_ms: u64,
    response_ms: u64,
    heuristics: Heuristics,
) -> Result<Storable, NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    let code = status.as_u16();
    let heuristic_status = HEURISTICALLY_CACHEABLE.contains(&code);
    if !storable_status(code) {
        return Err(NotStored::Status);
    }
    let Governing {
        directives: d,
        targeted,
    } = governing(headers)?;
    // Cache-Control still speaks for privacy even when a targeted field sets freshness.
    let cc = cache_control(headers)?;
    // must-understand (§5.2.2.3): stored only with a status this cache understands,
    // and then its no-store (there for caches that do not) is ignored.
    let must_understand = d.has("must-understand") || cc.has("must-understand");
    if must_understand && !heuristic_status && !UNDERSTOOD.contains(&code) {
        return Err(NotStored::Status);
    }
    if request.no_store || (!must_understand && (d.has("no-store") || cc.has("no-store"))) {
        return Err(NotStored::NoStore);
    }
    let mut strip_fields = Vec::new();
    for qualified in ["private", "no-cache"] {
        match cc.arg(qualified) {
            Some(fields) => {
                strip_fields.extend(fields.split(',').map(|f| f.trim().to_ascii_lowercase()))
            }
            None if qualified == "private" && cc.has("private") => return Err(NotStored::Private),
            None => {}
        }
    }
    let explicitly_shared =
        d.has("public") || d.has("s-maxage") || cc.has("public") || cc.has("s-maxage");
    if request.authorization
        && !(shares_despite_authorization(&d) || shares_despite_authorization(&cc))
    {
        return Err(NotStored::Authorization);
    }
    if headers.contains_key(header::SET_COOKIE)
        && !explicitly_shared
        && !strip_fields.iter().any(|f| f == "set-cookie")
    {
        return Err(NotStored::SetCookie);
    }
    if vary_fields(headers).iter().any(|f| f == "*") {
        return Err(NotStored::VaryStar);
    }

    let date_ms = http_date(headers, header::DATE);
    let seconds = |name: &str| d.seconds(name).map_err(|_| NotStored::Malformed);
    let explicit_ms = match (seconds("s-maxage")?, seconds("max-age")?) {
        (Some(s), _) => Some(s * 1000),
        (None, Some(m)) => Some(m * 1000),
        (None, None) if !targeted && headers.contains_key(header::EXPIRES) => {
            // An invalid Expires (e.g. "0") means already expired (§5.3).
            let expires = http_date(headers, header::EXPIRES).unwrap_or(0);
            Some(expires.saturating_sub(date_ms.unwrap_or(response_ms)))
        }
        (None, None) => None,
    };
    let (lifetime_ms, heuristic) = match explicit_ms {
        Some(ms) => (ms, false),
        None if heuristic_status || explicitly_shared => {
            let base = date_ms.unwrap_or(response_ms);
            let heuristic_ms = match http_date(headers, header::LAST_MODIFIED) {
                Some(lm) => ((base.saturating_sub(lm) as f64 * heuristics.fraction) as u64)
                    .min(heuristics.max_ms),
                // Nothing to base a heuristic on: storable only when told to share it
                // or to revalidate it, and then stale at once.
                None if explicitly_shared || d.has("no-cache") || cc.has("no-cache") => 0,
                None => return Err(NotStored::NoFreshness),
            };
            (heuristic_ms, true)
        }
        None => return Err(NotStored::NoFreshness),
    };

    let no_cache = (d.has("no-cache") && d.arg("no-cache").is_none())
        || (cc.has("no-cache") && cc.arg("no-cache").is_none());
    let forbids_stale = forbids_stale(headers);
    let window = |name: &str| -> u64 {
        if forbids_stale {
            0
        } else {
            d.seconds(name)
                .ok()
                .flatten()
                .or_else(|| cc.seconds(name).ok().flatten())
                .unwrap_or(0)
                * 1000
        }
    };
    let age_ms = age_seconds(headers).map_or(0, |s| s * 1000);
    // no-cache: stored, but stale from the start, so every reuse is revalidated
    // (§5.2.2.4), whatever max-age says.
    let lifetime_ms = if no_cache { 0 } else { lifetime_ms };
    Ok(Storable {
        lifetime_ms,
        heuristic,
        born_ms: born_ms(date_ms, age_ms, request_ms, response_ms),
        stale_while_revalidate_ms: window("stale-while-revalidate"),
        stale_if_error_ms: window("stale-if-error"),
        no_cache,
        strip_fields,
    })
}

/// RFC 9111 §4.2.3: the moment the content was new, so that
/// `current_age = now - born`. Uses the corrected initial age:
/// `max(apparent_age, age_value + response_delay)`.
pub fn born_ms(date_ms: Option<u64>, age_value_ms: u64, request_ms: u64, response_ms: u64) -> u64 {
    let apparent_age = date_ms.map_or(0, |d| response_ms.saturating_sub(d));
    let response_delay = response_ms.saturating_sub(request_ms);
    let corrected_age_value = age_value_ms + response_delay;
    response_ms.saturating_sub(apparent_age.max(corrected_age_value))
}

/// Field names listed in `Vary`, lower-cased.
pub fn vary_fields(headers: &HeaderMap) -> Vec<String> {
    let mut fields: Vec<String> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty())
        .collect();
    fields.sort();
    fields.dedup();
    fields
}

/// An HTTP date header in ms since the epoch, if present and valid.
pub fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<u64> {
    let text = headers.get(name)?.to_str().ok()?;
    let t = httpdate::parse_http_date(text).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
