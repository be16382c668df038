//! Origin settings: an origin's base URL, the per-Host routing table, and the Host
//! header policy.

use std::fmt;

/// Which Host header the origin receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardHost {
    /// The client's Host.
    Client,
    /// The origin URL's authority.
    Origin,
}

/// An origin's base URL: scheme and authority (no path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginUrl {
    /// `true` for https.
    pub tls: bool,
    /// `host[:port]` as written.
    pub authority: String,
}

impl OriginUrl {
    /// Parses `http://host[:port]` or `https://host[:port]` (a trailing `/` is allowed).
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text
            .parse()
            .map_err(|e| format!("not a URL ({e}): {text:?}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("expected an http:// or https:// URL, got {text:?}")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("no host in {text:?}"))?
            .to_string();
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("an origin URL has no path or query, got {text:?}"));
        }
        Ok(Self { tls, authority })
    }

    /// Port to connect to.
    pub fn port(&self) -> u16 {
        self.authority
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(if self.tls { 443 } else { 80 })
    }
}

impl fmt::Display for OriginUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.authority
        )
    }
}

pub(super) fn parse_routes(text: &str) -> Result<Vec<(String, OriginUrl)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|route| {
            let (host, url) = route
                .split_once('=')
                .ok_or_else(|| format!("expected host=URL, got {route:?}"))?;
            let host = host.trim().to_ascii_lowercase();
            if host.is_empty() {
                return Err(format!("empty host in {route:?}"));
            }
            Ok((host, OriginUrl::parse(url.trim())?))
        })
        .collect()
}

/// A comma-separated list of HTTP statuses (100 to 599).
pub(super) fn parse_statuses(text: &str) -> Result<Vec<u16>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse::<u16>() {
            Ok(status) if (100..=599).contains(&status) => Ok(status),
            _ => Err(format!(
                "expected HTTP statuses (100 to 599) separated by commas, got {s:?}"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::raw;
    use super::super::{Config, ConfigError};

    #[test]
    fn breaker_statuses_are_a_list_of_real_statuses() {
        let c = Config::resolve(&raw(&[("breaker_statuses", " 502, 503,504 ")])).unwrap();
        assert_eq!(c.breaker_statuses, vec![502, 503, 504]);
        assert!(Config::resolve(&raw(&[]))
            .unwrap()
            .breaker_statuses
            .is_empty());
        for bad in ["5xx", "99", "600", "500;503"] {
            assert!(
                matches!(
                    Config::resolve(&raw(&[("breaker_statuses", bad)])),
                    Err(ConfigError::Invalid {
                        setting: "breaker_statuses",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn origins_and_routes() {
        let c = Config::resolve(&raw(&[
            ("origin", "http://127.0.0.1:9000"),
            (
                "origin_routes",
                "A.example=https://a.internal, b.example=http://10.0.0.2:81/",
            ),
        ]))
        .unwrap();
        assert_eq!(c.origin.as_ref().unwrap().port(), 9000);
        assert_eq!(c.origin_routes[0].0, "a.example");
        assert!(c.origin_routes[0].1.tls);
        assert_eq!(c.origin_routes[0].1.port(), 443);
        assert_eq!(c.origin_routes[1].1.to_string(), "http://10.0.0.2:81");
        for (setting, bad) in [
            ("origin", "ftp://x"),
            ("origin", "http://x/path"),
            ("origin_routes", "nohost"),
            ("kv_prefix", "kv"),
            ("forward_host", "both"),
        ] {
            let err = Config::resolve(&raw(&[(setting, bad)])).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { setting: s, .. } if *s == setting),
                "{setting}={bad}: {err}"
            );
        }
    }
}
