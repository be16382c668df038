//! [`CacheStatus`]: what this cache did for a request, as RFC 9211's `Cache-Status`
//! response field says it (`fanz; hit; ttl=42`, `fanz; fwd=uri-miss;
//! fwd-status=200; stored; ttl=300`). Every answer names it through this one type,
//! so the field's vocabulary and parameter order are defined once.

use std::borrow::Cow;
use std::fmt;

use http::HeaderValue;

/// Why a request went forward (RFC 9211 §2.2 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fwd {
    /// Nothing was stored for the URL.
    UriMiss,
    /// Something was stored for the URL, but not for this variant.
    VaryMiss,
    /// A stored response was stale (or had to be revalidated).
    Stale,
    /// The method is not one the cache answers (`POST`, `PUT`...).
    Method,
    /// The cache chose not to use what it stores (a request with `Authorization`).
    Bypass,
    /// Not found as usable (the KV API: expired, or invalidated).
    Miss,
}

impl Fwd {
    /// Every reason, in the order of the list above.
    pub const ALL: [Fwd; 6] = [
        Fwd::UriMiss,
        Fwd::VaryMiss,
        Fwd::Stale,
        Fwd::Method,
        Fwd::Bypass,
        Fwd::Miss,
    ];

    /// The RFC 9211 token.
    pub fn as_str(self) -> &'static str {
        match self {
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Method => "method",
            Fwd::Bypass => "bypass",
            Fwd::Miss => "miss",
        }
    }
}

/// What the cache did for a request, as its `Cache-Status` says: a hit, a forward
/// for a reason, or nothing said (admin answers, KV writes). The metric label and
/// the access-log word ([`Outcome::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `hit`.
    Hit,
    /// The `fwd` reason.
    Forward(Fwd),
    /// No `Cache-Status`.
    None,
}

impl Outcome {
    /// `hit`, the `fwd` token (`uri-miss`, `stale`...), or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Forward(fwd) => fwd.as_str(),
            Outcome::None => "none",
        }
    }

    /// Reads back a `Cache-Status` value as [`CacheStatus::header_value`] writes
    /// it: only its first parameter, which `write_to` always puts first.
    pub fn of(value: Option<&HeaderValue>) -> Outcome {
        let Some(rest) = value.and_then(|v| v.as_bytes().strip_prefix(b"fanz; ")) else {
            return Outcome::None;
        };
        if rest.starts_with(b"hit") {
            return Outcome::Hit;
        }
        let Some(token) = rest.strip_prefix(b"fwd=") else {
            return Outcome::None;
        };
        let token = token.split(|b| *b == b';').next().unwrap_or_default();
        Fwd::ALL
            .into_iter()
            .find(|fwd| fwd.as_str().as_bytes() == token)
            .map_or(Outcome::None, Outcome::Forward)
    }
}

/// The `ttl` parameter: freshness left, or how long it has been stale (written
/// with a minus sign, `-0` included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ttl {
    Left(i64),
    StaleFor(u64),
}

/// What the cache did for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStatus {
    /// `None`: a hit; else why it went forward.
    fwd: Option<Fwd>,
    /// The cluster member the request went to instead of the origin.
    key: Option<String>,
    /// The status the next hop answered.
    fwd_status: Option<u16>,
    /// It shared another request's fetch.
    collapsed: bool,
    /// The response was stored.
    stored: bool,
    /// Freshness left, seconds (negative: stale for that long).
    ttl: Option<Ttl>,
    /// This cache's own details (`stale-while-revalidate`, `origin-error`...), each
    /// written as a `detail` parameter.
    details: Vec<Cow<'static, str>>,
}

impl CacheStatus {
    /// A hit with `ttl` seconds of freshness left (negative: served stale).
    pub fn hit(ttl: i64) -> Self {
        Self {
            fwd: None,
            key: None,
            fwd_status: None,
            collapsed: false,
            stored: false,
            ttl: Some(Ttl::Left(ttl)),
            details: Vec::new(),
        }
    }

    /// Went forward, for `fwd`.
    pub fn forward(fwd: Fwd) -> Self {
        Self {
            fwd: Some(fwd),
            ..Self::hit(0)
        }
        .without_ttl()
    }

    fn without_ttl(mut self) -> Self {
        self.ttl = None;
        self
    }

    /// Went to cluster member `owner` rather than the origin.
    pub fn via(mut self, owner: Option<&str>) -> Self {
        self.key = owner.map(str::to_string);
        self
    }

    /// The next hop answered `status`.
    pub fn fwd_status(mut self, status: u16) -> Self {
        self.fwd_status = Some(status);
        self
    }

    /// Shared another request's fetch.
    pub fn collapsed(mut self) -> Self {
        self.collapsed = true;
        self
    }

    /// The response was stored.
    pub fn stored(mut self) -> Self {
        self.stored = true;
        self
    }

    /// `ttl` seconds of freshness left.
    pub fn ttl(mut self, ttl: i64) -> Self {
        self.ttl = Some(Ttl::Left(ttl));
        self
    }

    /// Stale for `secs` seconds (`ttl=-secs`).
    pub fn stale_for(mut self, secs: u64) -> Self {
        self.ttl = Some(Ttl::StaleFor(secs));
        self
    }

    /// Adds a detail of this cache's own.
    pub fn detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.details.push(detail.into());
        self
    }

    /// The field's value. Written without `fmt`: it is on every hit's path.
    pub fn header_value(&self) -> HeaderValue {
        let mut out = String::with_capacity(48);
        self.write_to(&mut out);
        HeaderValue::from_maybe_shared(bytes::Bytes::from(out))
            .unwrap_or_else(|_| HeaderValue::from_static("fanz"))
    }

    fn write_to(&self, out: &mut String) {
        out.push_str("fanz");
        match self.fwd {
            None => out.push_str("; hit"),
            Some(fwd) => {
                out.push_str("; fwd=");
                out.push_str(fwd.as_str());
            }
        }
        if let Some(key) = &self.key {
            out.push_str("; key=");
            out.push_str(key);
        }
        if let Some(status) = self.fwd_status {
            out.push_str("; fwd-status=");
            push_number(out, u64::from(status));
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        if self.stored {
            out.push_str("; stored");
        }
        match self.ttl {
            Some(Ttl::Left(ttl)) => {
                out.push_str("; ttl=");
                if ttl < 0 {
                    out.push('-');
                }
                push_number(out, ttl.unsigned_abs());
            }
            Some(Ttl::StaleFor(secs)) => {
                out.push_str("; ttl=-");
                push_number(out, secs);
            }
            None => {}
        }
        for detail in &self.details {
            out.push_str("; detail=");
            out.push_str(detail);
        }
    }
}

/// Appends `n` in decimal.
fn push_number(out: &mut String, n: u64) {
    for &d in fanz_protocol::codec::decimal(n, &mut [0; 20]) {
        out.push(char::from(d));
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::with_capacity(48);
        self.write_to(&mut out);
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_label_is_read_back_from_the_header() {
        let label = |status: CacheStatus| Outcome::of(Some(&status.header_value())).as_str();
        assert_eq!(label(CacheStatus::hit(42)), "hit");
        assert_eq!(
            label(CacheStatus::hit(-3).detail("stale-while-revalidate")),
            "hit"
        );
        for fwd in Fwd::ALL {
            let status = CacheStatus::forward(fwd).fwd_status(200).via(Some("n1"));
            assert_eq!(label(status), fwd.as_str());
        }
        assert_eq!(Outcome::of(None), Outcome::None);
        assert_eq!(
            Outcome::of(Some(&HeaderValue::from_static("other; hit"))),
            Outcome::None
        );
    }

    #[test]
    fn parameters_come_in_one_order() {
        assert_eq!(CacheStatus::hit(42).to_string(), "fanz; hit; ttl=42");
        assert_eq!(
            CacheStatus::hit(-3)
                .detail("stale-while-revalidate")
                .to_string(),
            "fanz; hit; ttl=-3; detail=stale-while-revalidate"
        );
        assert_eq!(
            CacheStatus::forward(Fwd::UriMiss)
                .via(Some("n2"))
                .fwd_status(200)
                .stored()
                .ttl(300)
                .to_string(),
            "fanz; fwd=uri-miss; key=n2; fwd-status=200; stored; ttl=300"
        );
        assert_eq!(
            CacheStatus::forward(Fwd::VaryMiss)
                .collapsed()
                .ttl(5)
                .to_string(),
            "fanz; fwd=vary-miss; collapsed; ttl=5"
        );
        assert_eq!(
            CacheStatus::forward(Fwd::Method)
                .fwd_status(201)
                .to_string(),
            "fanz; fwd=method; fwd-status=201"
        );
        assert_eq!(
            CacheStatus::hit(0).stale_for(0).to_string(),
            "fanz; hit; ttl=-0"
        );
        assert_eq!(CacheStatus::hit(-120).header_value(), "fanz; hit; ttl=-120");
        assert_eq!(
            CacheStatus::hit(31_536_000).header_value(),
            "fanz; hit; ttl=31536000"
        );
    }
}
