//! Cache keys of HTTP responses: the normalised request target
//! (`scheme://host[:port]/path?query`, host lower-cased, default port dropped), and
//! for responses that `Vary`, a secondary key built from the request's values of the
//! varying fields. GET and HEAD share one key (a HEAD is answered from a cached GET).
//!
//! A URL whose response varies keeps a small *marker* entry at its primary key that
//! lists the varying fields; each variant is stored under its secondary key and
//! depends on the primary key, so purging the URL purges every variant.

use std::sync::Arc;

use bytes::Bytes;
use fanz_protocol::{CacheKey, Entry, EntryMeta, InvalidationId, Namespace, Timestamp};
use http::{header, HeaderMap, Method, Request};

use crate::config::rules::{Rule, Rules, COOKIE_FIELD};

/// Status of a Vary marker entry (never a real HTTP status).
const MARKER_STATUS: u16 = 0;

/// Where a request is going, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host, lower-case, without port: what origin routing matches on.
    pub host: String,
    /// `scheme://host[:port]` with the default port dropped.
    pub origin_part: String,
    /// Path and query as sent.
    pub path_and_query: String,
}

impl Target {
    /// The target of a request received on a listener (`tls`: whether it was HTTPS).
    /// Absolute-form targets are accepted (they are routed like any Host); CONNECT and
    /// asterisk-form are not.
    pub fn of(req: &http::request::Parts, tls: bool) -> Result<Target, &'static str> {
        if req.method == Method::CONNECT {
            return Err("CONNECT is not supported: this is not a forward proxy");
        }
        let uri = &req.uri;
        let authority = match uri.authority() {
            Some(a) => a.as_str(),
            None => req
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .ok_or("missing Host header")?,
        };
        let scheme = match uri.scheme_str() {
            Some("https") => "https",
            Some("http") => "http",
            Some(_) => return Err("unsupported scheme"),
            None if tls => "https",
            None => "http",
        };
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
        if !path_and_query.starts_with('/') {
            return Err("request target must be a path");
        }
        if authority.is_empty() || authority.contains(['/', '@', ' ']) {
            return Err("invalid Host");
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                match p.parse::<u16>() {
                    Ok(port) => (h, Some(port)),
                    Err(_) if p.is_empty() => (h, None),
                    Err(_) => return Err("invalid port in Host"),
                }
            }
            _ => (authority, None),
        };
        let host = host.to_ascii_lowercase();
        let default_port = if scheme == "https" { 443 } else { 80 };
        let mut origin_part = String::with_capacity(scheme.len() + 3 + host.len() + 6);
        origin_part.push_str(scheme);
        origin_part.push_str("://");
        origin_part.push_str(&host);
        if let Some(p) = port.filter(|&p| p != default_port) {
            use std::fmt::Write;
            let _ = write!(origin_part, ":{p}");
        }
        Ok(Target {
            host,
            origin_part,
            path_and_query: path_and_query.to_string(),
        })
    }

    /// With a path ending in `*` (the `PURGE` wildcard): the key prefix of every
    /// object of this origin whose path starts with the rest (`/img/*`: under
    /// `/img/`; `/*`: every object of the host on this scheme). The query is ignored.
    pub fn wildcard_prefix(&self) -> Option<CacheKey> {
        let prefix = self.path().strip_suffix('*')?;
        Some(CacheKey::new_joined(
            Namespace::Http,
            &[self.origin_part.as_bytes(), prefix.as_bytes()],
        ))
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(path, _)| path)
    }

    /// The first of `rules` that applies, with its query handling applied to the
    /// target (the cache key and the origin request both use the result).
    pub fn apply_rules(&mut self, rules: &Rules) -> Option<Arc<Rule>> {
        if rules.is_empty() {
            return None;
        }
        let rule = rules.matching(&self.host, self.path())?.clone();
        if rule.rewrites_query() {
            self.path_and_query = rule.normalise(&self.path_and_query);
        }
        Some(rule)
    }

    /// The primary cache key.
    pub fn primary_key(&self) -> CacheKey {
        CacheKey::new_joined(
            Namespace::Http,
            &[self.origin_part.as_bytes(), self.path_and_query.as_bytes()],
        )
    }

    /// The primary key of another path on the same origin (for `Location` and
    /// `Content-Location` invalidation); `None` for other origins.
    pub fn sibling_key(&self, location: &str) -> Option<CacheKey> {
        if location.starts_with('/') && !location.starts_with("//") {
            return Some(CacheKey::new(
                Namespace::Http,
                format!("{}{location}", self.origin_part).as_bytes(),
            ));
        }
        let key = url_key(location).ok()?;
        let same_origin = key.user_key().strip_prefix(self.origin_part.as_bytes())?;
        same_origin.starts_with(b"/").then_some(key)
    }
}

/// The target of an absolute URL given to the admin API.
pub fn url_target(url: &str) -> Result<Target, &'static str> {
    let uri: http::Uri = url.parse().map_err(|_| "not a URL")?;
    if uri.authority().is_none() {
        return Err("not an absolute URL");
    }
    let req = Request::builder()
        .uri(uri)
        .body(())
        .map_err(|_| "not a URL")?;
    Target::of(&req.into_parts().0, false)
}

/// The cache key of an absolute URL given to the admin API, as no rule changes it.
pub fn url_key(url: &str) -> Result<CacheKey, &'static str> {
    url_target(url).map(|t| t.primary_key())
}

/// The key prefix of every HTTP object: what `{"all": true}` purges.
pub fn all_objects() -> CacheKey {
    CacheKey::new(Namespace::Http, b"")
}

/// The key prefixes of every object of `host` (`a.example`, or `a.example:8080`),
/// one per scheme: `http://a.example/` and `https://a.example/`.
pub fn host_prefixes(host: &str) -> Result<[CacheKey; 2], String> {
    if host.is_empty() {
        return Err("a host is empty".into());
    }
    if host.contains(['/', '@', ' ', '?', '#', '*']) {
        return Err(format!(
            "host {host:?} is not a host name (like a.example or a.example:8080)"
        ));
    }
    let prefix = |scheme: &str| {
        url_key(&format!("{scheme}://{host}/")).map_err(|reason| format!("host {host:?}: {reason}"))
    };
    Ok([prefix("http")?, prefix("https")?])
}

/// The key prefix of every object whose URL starts with `prefix`, an absolute
/// `http://` or `https://` URL (`https://a.example/img/`); host lower-cased and
/// default port dropped as in every key.
pub fn url_prefix(prefix: &str) -> Result<CacheKey, String> {
    let lower = prefix.get(..8).unwrap_or(prefix).to_ascii_lowercase();
    if !lower.starts_with("http://") && !lower.starts_with("https://") {
        return Err(format!(
            "url prefix {prefix:?} needs a scheme: http:// or https://"
        ));
    }
    url_key(prefix).map_err(|reason| format!("url prefix {prefix:?}: {reason}"))
}

/// A request's `Accept-Encoding` reduced to the coding this cache keys on, as
/// Varnish and Fastly do: `br` if accepted, else `gzip` (or `x-gzip`), else
/// `identity`; `None` without the header (any coding is then acceptable, RFC 9110
/// §12.5.3, so it stays a variant of its own). A coding with `q=0` is refused.
/// Both the variant key and the request to the origin use it, so what the origin
/// answers matches the variant it is stored under.
pub fn accept_encoding(headers: &HeaderMap) -> Option<&'static str> {
    let mut values = headers.get_all(header::ACCEPT_ENCODING).iter().peekable();
    values.peek()?;
    let (mut br, mut gzip) = (false, false);
    for value in values {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            if coding.eq_ignore_ascii_case("br") {
                br = true;
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = true;
            }
        }
    }
    Some(if br {
        "br"
    } else if gzip {
        "gzip"
    } else {
        "identity"
    })
}

/// The secondary key of the variant a request selects, given the varying fields.
pub fn variant_key(primary: &CacheKey, fields: &[String], headers: &HeaderMap) -> CacheKey {
    let mut raw = primary.user_key().to_vec();
    raw.push(b'\n');
    for field in fields {
        raw.extend_from_slice(field.as_bytes());
        raw.push(b':');
        if field == "accept-encoding" {
            raw.extend_from_slice(accept_encoding(headers).unwrap_or_default().as_bytes());
            raw.push(b'\n');
            continue;
        }
        if let Some(name) = field.strip_prefix(COOKIE_FIELD) {
            raw.extend_from_slice(cookie(headers, name).unwrap_or_default().as_bytes());
            raw.push(b'\n');
            continue;
        }
        let values: Vec<String> = headers
            .get_all(field.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        raw.extend_from_slice(values.join(", ").as_bytes());
        raw.push(b'\n');
    }
    CacheKey::new(Namespace::Http, &raw)
}

/// The value of cookie `name` in a request's `Cookie` fields, if it has one.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, value) = pair.split_once('=')?;
            (n.trim() == name).then(|| value.trim())
        })
}

/// A marker entry listing the varying fields of a URL.
pub fn marker(fields: &[String], version: Timestamp, lifetime_ms: u64) -> Entry {
    Entry {
        meta: EntryMeta {
            version,
            born_ms: version.millis(),
            ttl_ms: lifetime_ms,
            status: MARKER_STATUS,
            headers: vec![(Bytes::from_static(b"vary"), Bytes::from(fields.join(",")))],
            ..EntryMeta::default()
        },
        body: Bytes::new(),
    }
}

/// The varying fields, if `meta` is a marker.
pub fn marker_fields(meta: &EntryMeta) -> Option<Vec<String>> {
    if meta.status != MARKER_STATUS {
        return None;
    }
    let list = meta.header("vary")?;
    Some(
        String::from_utf8_lossy(list)
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// The dependency that ties a variant to its URL.
pub fn variant_dependency(primary: &CacheKey) -> InvalidationId {
    InvalidationId::key(primary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str, host: Option<&str>) -> Result<Target, &'static str> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        Target::of(&b.body(()).unwrap().into_parts().0, false)
    }

    #[test]
    fn normalises_host_case_and_default_port() {
        let a = target("/a?b=1", Some("Example.COM:80")).unwrap();
        let b = target("http://example.com/a?b=1", None).unwrap();
        assert_eq!(a.primary_key(), b.primary_key());
        assert_eq!(a.host, "example.com");
        let c = target("/a?b=1", Some("example.com:8080")).unwrap();
        assert_ne!(a.primary_key(), c.primary_key());
        assert_eq!(c.origin_part, "http://example.com:8080");
        assert_ne!(
            target("/a?b=2", Some("example.com")).unwrap().primary_key(),
            a.primary_key()
        );
    }

    #[test]
    fn refuses_what_is_not_an_origin_request() {
        let connect = Request::builder()
            .method(Method::CONNECT)
            .uri("example.com:443")
            .body(())
            .unwrap();
        assert!(Target::of(&connect.into_parts().0, false).is_err());
        assert!(target("/x", None).is_err());
        assert!(target("/x", Some("a b")).is_err());
        assert!(target("/x", Some("host:port")).is_err());
    }

    #[test]
    fn variants_differ_by_the_varying_fields_only() {
        let primary = target("/", Some("h")).unwrap().primary_key();
        let fields = vec!["accept-encoding".to_string()];
        let mut gzip = HeaderMap::new();
        gzip.insert("accept-encoding", "gzip".parse().unwrap());
        gzip.insert("user-agent", "a".parse().unwrap());
        let mut gzip2 = HeaderMap::new();
        gzip2.insert("accept-encoding", "gzip".parse().unwrap());
        gzip2.insert("user-agent", "b".parse().unwrap());
        let br = {
            let mut h = HeaderMap::new();
            h.insert("accept-encoding", "br".parse().unwrap());
            h
        };
        assert_eq!(
            variant_key(&primary, &fields, &gzip),
            variant_key(&primary, &fields, &gzip2)
        );
        assert_ne!(
            variant_key(&primary, &fields, &gzip),
            variant_key(&primary, &fields, &br)
        );
        assert_ne!(variant_key(&primary, &fields, &gzip), primary);
    }

    // Issue 20, part 3: Accept-Encoding enters the key as br, gzip or identity
    // (absent stays its own variant: any coding is acceptable to such a client).
    #[test]
    fn accept_encoding_is_normalised_before_it_enters_the_key() {
        let primary = target("/", Some("h")).unwrap().primary_key();
        let fields = vec!["accept-encoding".to_string()];
        let key = |value: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = value {
                h.insert("accept-encoding", v.parse().unwrap());
            }
            variant_key(&primary, &fields, &h)
        };
        let br = key(Some("br"));
        for browser in [
            "gzip, deflate, br",
            "gzip, deflate, br, zstd",
            "br;q=1.0, gzip;q=0.8, *;q=0.1",
            "BR",
        ] {
            assert_eq!(key(Some(browser)), br, "{browser}");
        }
        let gzip = key(Some("gzip"));
        for browser in [
            "gzip, deflate",
            "deflate, gzip;q=0.5",
            "x-gzip",
            "br;q=0, gzip",
        ] {
            assert_eq!(key(Some(browser)), gzip, "{browser}");
        }
        let identity = key(Some("identity"));
        for browser in ["deflate", "gzip;q=0", "", "compress"] {
            assert_eq!(key(Some(browser)), identity, "{browser}");
        }
        assert_ne!(br, gzip);
        assert_ne!(gzip, identity);
        assert_ne!(key(None), identity, "no header: any coding is acceptable");
        assert_eq!(accept_encoding(&HeaderMap::new()), None);
    }

    #[test]
    fn markers_round_trip() {
        let m = marker(
            &["accept".into(), "x-a".into()],
            Timestamp::from_millis(5),
            10,
        );
        assert_eq!(
            marker_fields(&m.meta),
            Some(vec!["accept".to_string(), "x-a".to_string()])
        );
        let mut real = m.meta.clone();
        real.status = 200;
        assert_eq!(marker_fields(&real), None);
    }

    #[test]
    fn sibling_and_admin_url_keys() {
        let t = target("/a", Some("example.com")).unwrap();
        assert_eq!(t.sibling_key("/b"), url_key("http://example.com/b").ok());
        assert_eq!(
            t.sibling_key("http://example.com/c"),
            url_key("http://EXAMPLE.com:80/c").ok()
        );
        assert_eq!(t.sibling_key("http://other.example/c"), None);
        assert!(url_key("/relative").is_err());
    }
}
