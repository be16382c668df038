//! Who may purge and use the admin API, and how often.
//!
//! - **Tokens, in two scopes**: an admin token opens everything; a purge token
//!   (Fastly's and Cloudflare's scoped tokens) opens purges and their reports only.
//!   Several of each may be valid at once, so a token is rotated by a reload that
//!   adds the new one, then one that drops the old. A token is presented as
//!   `Authorization: Bearer <token>` (or as an HTTP Basic password, so a browser can
//!   open the status page) and compared in constant time. With no token configured
//!   only loopback clients are admitted.
//! - **An address allow-list** (`admin_allow`, CIDR blocks): when set, other
//!   addresses are refused before their credentials are looked at.
//! - **A rate limit per token**: a token bucket per valid token; past it, 429 with
//!   `Retry-After`.
//!
//! The rules can be replaced while the node runs (a config reload); every clone of
//! an [`Auth`] sees the change. Refusals carry their [`Refusal`] so the caller can
//! count them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::config::Cidr;
use crate::http::{text, Body};
use crate::live::Live;

/// What a request asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Purge, or read a purge's report: an admin or a purge token.
    Purge,
    /// Anything else on the admin API: an admin token.
    Admin,
}

/// Why a request was refused (the label of `fanz_admin_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address is not in `admin_allow`.
    Address,
    /// No token, or one that is not valid (401).
    Unauthorized,
    /// A valid token whose scope does not cover the request (403).
    Scope,
    /// Its token's rate limit is spent (429).
    RateLimited,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Address => "address",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Scope => "scope",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// A refusal and the response that says why.
#[derive(Debug)]
pub struct Denied {
    /// Why.
    pub reason: Refusal,
    /// The answer to send.
    pub response: Response<Body>,
}

/// The rules a reload replaces as one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    /// Tokens that open everything.
    pub admin_tokens: Vec<String>,
    /// Tokens that open purges and purge reports only.
    pub purge_tokens: Vec<String>,
    /// When not empty, the only client addresses admitted.
    pub allow: Vec<Cidr>,
    /// Requests per second per token (0: no limit); a burst of twice that.
    pub rate_per_second: u32,
}

impl AccessRules {
    /// The rules `config` sets.
    pub fn of(config: &crate::config::Config) -> Self {
        Self {
            admin_tokens: config.admin_token.clone().unwrap_or_default(),
            purge_tokens: config.purge_token.clone().unwrap_or_default(),
            allow: config.admin_allow.clone(),
            rate_per_second: config.admin_rate_limit,
        }
    }

    fn any_token(&self) -> bool {
        !self.admin_tokens.is_empty() || !self.purge_tokens.is_empty()
    }
}

/// A token's bucket: `level` requests may go now; it refills at the rate.
#[derive(Debug)]
struct Bucket {
    level: f64,
    at: Instant,
}

/// The node's admin credentials and limits, shared by the listeners that check them.
#[derive(Clone)]
pub struct Auth {
    rules: Arc<Live<AccessRules>>,
    /// Told of every refusal (the metrics counter).
    on_refusal: Option<Arc<dyn Fn(Refusal) + Send + Sync>>,
    /// Per valid token (its index in the rules, which is not secret), reset when
    /// the rules change.
    buckets: Arc<Mutex<HashMap<(bool, usize), Bucket>>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rules = self.rules.get();
        write!(
            f,
            "Auth({} admin tokens, {} purge tokens, {} allowed blocks)",
            rules.admin_tokens.len(),
            rules.purge_tokens.len(),
            rules.allow.len()
        )
    }
}

impl Auth {
    /// Admits by `rules`.
    pub fn new(rules: AccessRules) -> Self {
        Self {
            rules: Arc::new(Live::new(rules)),
            on_refusal: None,
            buckets: Arc::default(),
        }
    }

    /// Tells `count` of every refusal from now on.
    pub fn counting(mut self, count: impl Fn(Refusal) + Send + Sync + 'static) -> Self {
        self.on_refusal = Some(Arc::new(count));
        self
    }

    fn refused(&self, denied: Box<Denied>) -> Box<Denied> {
        if let Some(count) = &self.on_refusal {
            count(denied.reason);
        }
        denied
    }

    /// A node whose only rule is one admin token (or loopback only): tests and
    /// tools.
    pub fn with_token(token: Option<String>) -> Self {
        Self::new(AccessRules {
            admin_tokens: token.into_iter().collect(),
            ..AccessRules::default()
        })
    }

    /// Replaces the rules (every clone sees them from the next request on); the
    /// rate limits start afresh.
    pub fn set_rules(&self, rules: AccessRules) {
        self.rules.set(rules);
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether `peer` may reach the admin port at all (`admin_allow`); health
    /// checks use it alone, needing no token.
    pub fn check_address(&self, peer: SocketAddr) -> Result<(), Box<Denied>> {
        let rules = self.rules.get();
        if rules.allow.is_empty() || rules.allow.iter().any(|c| c.contains(peer.ip())) {
            return Ok(());
        }
        Err(self.refused(Box::new(Denied {
            reason: Refusal::Address,
            response: text(
                StatusCode::FORBIDDEN,
                format!("{} is not in admin_allow", peer.ip()),
            ),
        })))
    }

    /// `Ok` when the request may do what `scope` covers; otherwise why not, with
    /// the answer: 403 for an address outside `admin_allow` or a token of too small
    /// a scope, 401 (inviting a bearer token and HTTP Basic) without a valid token,
    /// 429 with `Retry-After` past the token's rate.
    pub fn check(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
        scope: Scope,
    ) -> Result<(), Box<Denied>> {
        self.check_address(peer)?;
        self.check_credentials(headers, peer, scope)
    }

    /// [`Self::check`] without the address check, for a listener that made it
    /// once for every request (the admin port).
    pub fn check_credentials(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
        scope: Scope,
    ) -> Result<(), Box<Denied>> {
        self.credentials(headers, peer, scope)
            .map_err(|denied| self.refused(denied))
    }

    fn credentials(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
        scope: Scope,
    ) -> Result<(), Box<Denied>> {
        let rules = self.rules.get();
        if !rules.any_token() {
            if peer.ip().is_loopback() {
                return Ok(());
            }
            return Err(unauthorized(
                "no admin token is configured, so only loopback clients may do this",
            ));
        }
        let Some(presented) = presented_token(headers) else {
            return Err(unauthorized(
                "missing admin token (Authorization: Bearer <token>)",
            ));
        };
        let find = |tokens: &[String]| {
            // Every token is compared, so the time taken does not say which matched.
            tokens.iter().enumerate().fold(None, |found, (i, t)| {
                if constant_time_eq(presented.as_bytes(), t.as_bytes()) {
                    Some(i)
                } else {
                    found
                }
            })
        };
        let bucket = match (find(&rules.admin_tokens), find(&rules.purge_tokens)) {
            (Some(i), _) => (true, i),
            (None, Some(i)) if scope == Scope::Purge => (false, i),
            (None, Some(_)) => {
                return Err(Box::new(Denied {
                    reason: Refusal::Scope,
                    response: text(
                        StatusCode::FORBIDDEN,
                        "this token may purge only; this needs an admin token",
                    ),
                }))
            }
            (None, None) => return Err(unauthorized("invalid admin token")),
        };
        self.take(bucket, rules.rate_per_second)
    }

    /// Takes one request from the bucket `key`, refilled at `rate` per second.
    fn take(&self, key: (bool, usize), rate: u32) -> Result<(), Box<Denied>> {
        if rate == 0 {
            return Ok(());
        }
        let (rate, burst) = (f64::from(rate), 2.0 * f64::from(rate));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(key).or_insert(Bucket {
            level: burst,
            at: now,
        });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.level = (bucket.level + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.level >= 1.0 {
            bucket.level -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.level) / rate);
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut response = text(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this token's rate limit ({} requests/s, admin_rate_limit) is spent: retry in {seconds} s",
                rate
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        Err(Box::new(Denied {
            reason: Refusal::RateLimited,
            response,
        }))
    }
}

/// A 401 that invites both a bearer token and HTTP Basic (any user name, the token
/// as password).
fn unauthorized(reason: &str) -> Box<Denied> {
    let mut response = text(StatusCode::UNAUTHORIZED, reason);
    let challenges = response.headers_mut();
    challenges.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"fanz\""),
    );
    challenges.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"fanz admin\", charset=\"UTF-8\""),
    );
    Box::new(Denied {
        reason: Refusal::Unauthorized,
        response,
    })
}

/// The token a request presents: `Bearer <token>`, or the password of
/// `Basic base64(user:token)`.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_string());
    }
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let pair = String::from_utf8(decoded).ok()?;
    pair.split_once(':')
        .map(|(_, password)| password.to_string())
}

/// Compares without an early exit, so the time taken does not reveal how much of a
/// guess was right. (The length is not secret.)
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
        h
    }

    fn remote() -> SocketAddr {
        "192.0.2.1:1".parse().unwrap()
    }

    fn reason(r: Result<(), Box<Denied>>) -> Option<Refusal> {
        r.err().map(|d| d.reason)
    }

    #[test]
    fn token_and_loopback_rules() {
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let open = Auth::with_token(None);
        assert!(open.check(&HeaderMap::new(), local, Scope::Admin).is_ok());
        assert!(open
            .check(&HeaderMap::new(), remote(), Scope::Admin)
            .is_err());

        let locked = Auth::with_token(Some("s3cret".into()));
        assert!(
            locked
                .check(&HeaderMap::new(), local, Scope::Admin)
                .is_err(),
            "a token, once set, is required from loopback too"
        );
        assert!(locked
            .check(&bearer("s3cret"), remote(), Scope::Admin)
            .is_ok());
        let denied = locked
            .check(&bearer("s3cre7"), remote(), Scope::Admin)
            .unwrap_err();
        assert_eq!(denied.reason, Refusal::Unauthorized);
        assert_eq!(denied.response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            denied
                .response
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .count(),
            2
        );
    }

    #[test]
    fn basic_auth_carries_the_token_as_its_password() {
        let locked = Auth::with_token(Some("s3cret".into()));
        let basic = |pair: &str| {
            let mut h = HeaderMap::new();
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
            );
            h
        };
        let check = |h: &HeaderMap| locked.check(h, remote(), Scope::Admin);
        assert!(check(&basic("admin:s3cret")).is_ok());
        assert!(check(&basic(":s3cret")).is_ok());
        assert!(check(&basic("s3cret:")).is_err());
        assert!(check(&basic("admin:wrong")).is_err());
        let mut garbage = HeaderMap::new();
        garbage.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic %%%"));
        assert!(check(&garbage).is_err());
    }

    #[test]
    fn new_rules_apply_to_every_clone_and_several_tokens_rotate() {
        let auth = Auth::with_token(Some("old".into()));
        let clone = auth.clone();
        // Rotation, step one: both valid.
        auth.set_rules(AccessRules {
            admin_tokens: vec!["new".into(), "old".into()],
            ..AccessRules::default()
        });
        assert!(clone.check(&bearer("old"), remote(), Scope::Admin).is_ok());
        assert!(clone.check(&bearer("new"), remote(), Scope::Admin).is_ok());
        // Step two: the old one dropped.
        auth.set_rules(AccessRules {
            admin_tokens: vec!["new".into()],
            ..AccessRules::default()
        });
        assert!(clone.check(&bearer("old"), remote(), Scope::Admin).is_err());
        assert!(clone.check(&bearer("new"), remote(), Scope::Admin).is_ok());
    }

    #[test]
    fn a_purge_token_purges_and_does_nothing_else() {
        let auth = Auth::new(AccessRules {
            admin_tokens: vec!["adm".into()],
            purge_tokens: vec!["prg".into(), "prg2".into()],
            ..AccessRules::default()
        });
        let check = |t: &str, scope| reason(auth.check(&bearer(t), remote(), scope));
        assert_eq!(check("prg", Scope::Purge), None);
        assert_eq!(check("prg2", Scope::Purge), None);
        assert_eq!(check("prg", Scope::Admin), Some(Refusal::Scope));
        assert_eq!(check("adm", Scope::Purge), None, "admin covers purges");
        assert_eq!(check("adm", Scope::Admin), None);
        assert_eq!(check("nope", Scope::Purge), Some(Refusal::Unauthorized));
        // Purge tokens alone: admin stays loopback-only... and needs a token there
        // too, since tokens are configured.
        let purge_only = Auth::new(AccessRules {
            purge_tokens: vec!["prg".into()],
            ..AccessRules::default()
        });
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            reason(purge_only.check(&HeaderMap::new(), local, Scope::Admin)),
            Some(Refusal::Unauthorized)
        );
    }

    #[test]
    fn the_allow_list_refuses_other_addresses_before_their_tokens() {
        let auth = Auth::new(AccessRules {
            admin_tokens: vec!["adm".into()],
            allow: vec![
                Cidr::parse("10.0.0.0/8").unwrap(),
                Cidr::parse("2001:db8::/32").unwrap(),
            ],
            ..AccessRules::default()
        });
        let from = |a: &str| {
            reason(auth.check(
                &bearer("adm"),
                SocketAddr::new(a.parse().unwrap(), 1),
                Scope::Admin,
            ))
        };
        assert_eq!(from("10.1.2.3"), None);
        assert_eq!(from("::ffff:10.1.2.3"), None, "IPv4-mapped");
        assert_eq!(from("2001:db8::1"), None);
        assert_eq!(from("11.0.0.1"), Some(Refusal::Address));
        assert_eq!(from("127.0.0.1"), Some(Refusal::Address));
        assert_eq!(from("2001:db9::1"), Some(Refusal::Address));
        let denied = auth
            .check(&HeaderMap::new(), remote(), Scope::Purge)
            .unwrap_err();
        assert_eq!(denied.response.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn a_token_past_its_rate_gets_429_with_retry_after_and_others_do_not() {
        let auth = Auth::new(AccessRules {
            admin_tokens: vec!["a".into(), "b".into()],
            rate_per_second: 5,
            ..AccessRules::default()
        });
        let check = |t: &str| auth.check(&bearer(t), remote(), Scope::Admin);
        // A burst of twice the rate, then refusals.
        for _ in 0..10 {
            assert!(check("a").is_ok());
        }
        let denied = check("a").unwrap_err();
        assert_eq!(denied.reason, Refusal::RateLimited);
        assert_eq!(denied.response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            denied.response.headers().get(header::RETRY_AFTER).unwrap(),
            "1"
        );
        assert!(check("b").is_ok(), "buckets are per token");
        // Wrong tokens spend nothing, and are refused as such.
        assert_eq!(reason(check("c")), Some(Refusal::Unauthorized));
        // A reload starts the buckets afresh.
        auth.set_rules(AccessRules {
            admin_tokens: vec!["a".into()],
            rate_per_second: 5,
            ..AccessRules::default()
        });
        assert!(check("a").is_ok());
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b"abd"));
    }
}
