//! Parsers for the request headers the KV API and purge paths understand, and the
//! `Cache-Status` (RFC 9211) value the node answers with. A malformed header is an
//! error that names it.

use std::time::Duration;

use bytes::Bytes;
use fanz_protocol::{CacheKey, InvalidationId};
use http::HeaderMap;

use super::directives::Directives;

/// Most tags one request may set.
pub const MAX_TAGS: usize = 256;
/// Longest tag.
pub const MAX_TAG_LEN: usize = 1024;
/// Most dependencies one value may declare.
pub const MAX_DEPENDENCIES: usize = 256;
/// Prefix that marks a tag in `Fanz-Depends-On`.
pub const TAG_PREFIX: &str = "tag:";

/// A header that could not be parsed; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {header} header: {reason}")]
pub struct HeaderError {
    /// Header name.
    pub header: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn err(header: &'static str, reason: impl Into<String>) -> HeaderError {
    HeaderError {
        header,
        reason: reason.into(),
    }
}

/// Every value of the header `display` (as named in errors), as visible-ASCII text.
fn values<'a>(headers: &'a HeaderMap, display: &'static str) -> Result<Vec<&'a str>, HeaderError> {
    headers
        .get_all(display)
        .iter()
        .map(|v| {
            v.to_str()
                .map_err(|_| err(display, "contains bytes that are not visible ASCII"))
        })
        .collect()
}

/// The freshness directives of a request's `Cache-Control`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age`.
    pub max_age: Option<Duration>,
    /// `stale-while-revalidate`.
    pub stale_while_revalidate: Option<Duration>,
    /// `stale-if-error`.
    pub stale_if_error: Option<Duration>,
}

/// Parses a request's `Cache-Control` (RFC 9111 §5.2). Unknown directives are
/// ignored, as the RFC requires; a known directive with a bad argument, or a list that
/// is not `token[=token|quoted-string]`, is an error. The first occurrence wins.
pub fn cache_control(headers: &HeaderMap) -> Result<CacheControl, HeaderError> {
    const NAME: &str = "Cache-Control";
    let d = Directives::parse(values(headers, NAME)?).map_err(|r| err(NAME, r))?;
    let seconds = |name: &str| {
        d.seconds(name)
            .map(|s| s.map(Duration::from_secs))
            .map_err(|r| err(NAME, r))
    };
    Ok(CacheControl {
        max_age: seconds("max-age")?,
        stale_while_revalidate: seconds("stale-while-revalidate")?,
        stale_if_error: seconds("stale-if-error")?,
    })
}

/// Checks one tag: 1 to [`MAX_TAG_LEN`] visible ASCII characters.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("empty tag".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("tag longer than {MAX_TAG_LEN} bytes"));
    }
    if !tag.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "tag {tag:?} has characters that are not visible ASCII"
        ));
    }
    Ok(())
}

/// Parses `Surrogate-Key`: tags separated by spaces.
pub fn surrogate_keys(headers: &HeaderMap) -> Result<Vec<Bytes>, HeaderError> {
    const NAME: &str = "Surrogate-Key";
    let mut tags = Vec::new();
    for value in values(headers, NAME)? {
        for tag in value.split_ascii_whitespace() {
            validate_tag(tag).map_err(|r| err(NAME, r))?;
            tags.push(Bytes::copy_from_slice(tag.as_bytes()));
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(err(NAME, format!("more than {MAX_TAGS} tags")));
    }
    tags.sort();
    tags.dedup();
    Ok(tags)
}

/// Parses `Fanz-Depends-On`: space-separated KV keys (percent-encoded where needed)
/// and tags (`tag:NAME`).
pub fn depends_on(
    headers: &HeaderMap,
    max_key_size: usize,
) -> Result<Vec<InvalidationId>, HeaderError> {
    const NAME: &str = "Fanz-Depends-On";
    let mut deps = Vec::new();
    for value in values(headers, NAME)? {
        for item in value.split_ascii_whitespace() {
            if let Some(tag) = item.strip_prefix(TAG_PREFIX) {
                validate_tag(tag).map_err(|r| err(NAME, r))?;
                deps.push(InvalidationId::tag(tag.as_bytes()));
            } else {
                let key = fanz_protocol::percent::decode(item).map_err(|r| err(NAME, r))?;
                if key.is_empty() || key.len() > max_key_size {
                    return Err(err(
                        NAME,
                        format!("key {item:?} is empty or longer than {max_key_size} bytes"),
                    ));
                }
                deps.push(InvalidationId::key(&CacheKey::kv(&key)));
            }
        }
    }
    if deps.len() > MAX_DEPENDENCIES {
        return Err(err(
            NAME,
            format!("more than {MAX_DEPENDENCIES} dependencies"),
        ));
    }
    deps.sort();
    deps.dedup();
    Ok(deps)
}

/// The members of a comma-separated list field, over all its lines, trimmed (lines
/// that are not visible ASCII are skipped).
pub fn list_members(
    headers: &HeaderMap,
    name: impl http::header::AsHeaderName,
) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether `If-None-Match` matches `etag` (weak comparison, RFC 9110 §13.1.2).
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    fn strip(tag: &str) -> &str {
        tag.trim().trim_start_matches("W/")
    }
    let ours = strip(etag);
    list_members(headers, http::header::IF_NONE_MATCH)
        .any(|candidate| candidate == "*" || strip(candidate) == ours)
}

/// Whether a request carries preconditions a write evaluates (`If-Match`,
/// `If-None-Match`).
pub fn has_write_preconditions(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::IF_MATCH)
        || headers.contains_key(http::header::IF_NONE_MATCH)
}

/// A write's preconditions (RFC 9110 §13.2.2) against the target's current `etag`
/// (`None`: it has no current value): `Err` names the first one that is false.
/// `If-Match` compares strongly (a weak tag never matches) and is false with no
/// current value; `If-None-Match` compares weakly, and `*` is false when there is
/// one. `If-Unmodified-Since` is not evaluated: the values it applies to carry no
/// `Last-Modified` (RFC 9110 §13.1.4 then says to ignore it).
pub fn write_preconditions(headers: &HeaderMap, etag: Option<&str>) -> Result<(), &'static str> {
    if headers.contains_key(http::header::IF_MATCH) {
        let matched = etag.is_some_and(|etag| {
            list_members(headers, http::header::IF_MATCH)
                .any(|c| c == "*" || (!c.starts_with("W/") && c == etag.trim()))
        });
        if !matched {
            return Err("If-Match");
        }
    }
    if etag.is_some_and(|etag| if_none_match(headers, etag)) {
        return Err("If-None-Match");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn write_preconditions_follow_rfc_9110() {
        let current = Some("\"v1\"");
        let check =
            |pairs: &[(&'static str, &str)], etag| write_preconditions(&headers(pairs), etag);
        assert_eq!(check(&[], current), Ok(()));
        assert_eq!(check(&[], None), Ok(()));
        // If-Match: strong, any of a list, `*` for any current value, false when absent.
        assert_eq!(check(&[("if-match", "\"v1\"")], current), Ok(()));
        assert_eq!(check(&[("if-match", "\"v0\", \"v1\"")], current), Ok(()));
        assert_eq!(
            check(&[("if-match", "\"v0\""), ("if-match", "\"v1\"")], current),
            Ok(())
        );
        assert_eq!(check(&[("if-match", "W/\"v1\"")], current), Err("If-Match"));
        assert_eq!(check(&[("if-match", "\"v0\"")], current), Err("If-Match"));
        assert_eq!(check(&[("if-match", "*")], current), Ok(()));
        assert_eq!(check(&[("if-match", "*")], None), Err("If-Match"));
        // If-None-Match: weak, `*` false when there is a value, true when there is none.
        assert_eq!(check(&[("if-none-match", "*")], None), Ok(()));
        assert_eq!(
            check(&[("if-none-match", "*")], current),
            Err("If-None-Match")
        );
        assert_eq!(
            check(&[("if-none-match", "W/\"v1\"")], current),
            Err("If-None-Match")
        );
        assert_eq!(check(&[("if-none-match", "\"v0\"")], current), Ok(()));
        // If-Match is evaluated first.
        assert_eq!(
            check(&[("if-match", "\"v0\""), ("if-none-match", "*")], current),
            Err("If-Match")
        );
        assert!(has_write_preconditions(&headers(&[("if-none-match", "*")])));
        assert!(!has_write_preconditions(&headers(&[(
            "if-modified-since",
            "x"
        )])));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cache_control_directives() {
        let cc = cache_control(&headers(&[(
            "cache-control",
            "public, max-age=60, stale-while-revalidate=\"30\", x-ext=\"a,b\", stale-if-error=5",
        )]))
        .unwrap();
        assert_eq!(cc.max_age, Some(Duration::from_secs(60)));
        assert_eq!(cc.stale_while_revalidate, Some(Duration::from_secs(30)));
        assert_eq!(cc.stale_if_error, Some(Duration::from_secs(5)));
        // First occurrence wins; empty list elements are fine.
        let cc = cache_control(&headers(&[("cache-control", "max-age=1,, max-age=2")])).unwrap();
        assert_eq!(cc.max_age, Some(Duration::from_secs(1)));
    }

    #[test]
    fn malformed_cache_control_is_an_error_naming_the_header() {
        for bad in [
            "max-age=abc",
            "max-age",
            "max-age=-1",
            "max age=5",
            "max-age=\"5",
            "=5",
            "max-age=5 6",
        ] {
            let e = cache_control(&headers(&[("cache-control", bad)])).unwrap_err();
            assert_eq!(e.header, "Cache-Control", "{bad}");
        }
    }

    #[test]
    fn surrogate_keys_split_on_spaces() {
        let tags = surrogate_keys(&headers(&[
            ("surrogate-key", "b a  c"),
            ("surrogate-key", "a"),
        ]))
        .unwrap();
        assert_eq!(
            tags,
            vec![Bytes::from("a"), Bytes::from("b"), Bytes::from("c")]
        );
        let mut h = HeaderMap::new();
        h.insert(
            "surrogate-key",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(surrogate_keys(&h).unwrap_err().header, "Surrogate-Key");
        let many = (0..=MAX_TAGS)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(surrogate_keys(&headers(&[("surrogate-key", &many)])).is_err());
    }

    #[test]
    fn depends_on_keys_and_tags() {
        let deps = depends_on(&headers(&[("fanz-depends-on", "user%2F1 tag:team")]), 100).unwrap();
        assert!(deps.contains(&InvalidationId::key(&CacheKey::kv(b"user/1"))));
        assert!(deps.contains(&InvalidationId::tag(b"team")));
        for bad in ["tag:", "bad%zz", "%"] {
            assert_eq!(
                depends_on(&headers(&[("fanz-depends-on", bad)]), 100)
                    .unwrap_err()
                    .header,
                "Fanz-Depends-On",
                "{bad}"
            );
        }
        assert!(depends_on(&headers(&[("fanz-depends-on", "abcdef")]), 3).is_err());
    }

    #[test]
    fn etag_matching() {
        let h = headers(&[("if-none-match", "\"x\", W/\"abc\"")]);
        assert!(if_none_match(&h, "\"abc\""));
        assert!(!if_none_match(&h, "\"abd\""));
        assert!(if_none_match(&headers(&[("if-none-match", "*")]), "\"q\""));
    }
}
