//! Who may purge and use the admin API: a bearer token (or the same token as an HTTP
//! Basic password, so a browser can open the status page) compared in constant time,
//! or, when no token is configured, loopback clients only. The token can be replaced
//! while the node runs (a config reload); every clone of an [`Auth`] sees the change.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::http::{text, Body};
use crate::live::Live;

/// The node's admin credential, shared by the listeners that check it.
#[derive(Clone)]
pub struct Auth {
    token: Arc<Live<Option<String>>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.current().is_some() {
            "Auth(token)"
        } else {
            "Auth(loopback only)"
        })
    }
}

impl Auth {
    /// Requires `token` when set; otherwise admits loopback clients only.
    pub fn new(token: Option<String>) -> Self {
        Self {
            token: Arc::new(Live::new(token)),
        }
    }

    /// Replaces the token (every clone sees it from the next request on).
    pub fn set_token(&self, token: Option<String>) {
        self.token.set(token);
    }

    fn current(&self) -> Arc<Option<String>> {
        self.token.get()
    }

    /// `Ok` when the request may purge; otherwise the 401 to answer, which invites
    /// both a bearer token and HTTP Basic (any user name, the token as password).
    pub fn check(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<(), Box<Response<Body>>> {
        let reason = match self.current().as_deref() {
            None if peer.ip().is_loopback() => return Ok(()),
            None => "no admin token is configured, so only loopback clients may do this",
            Some(token) => match presented_token(headers) {
                Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => return Ok(()),
                Some(_) => "invalid admin token",
                None => "missing admin token (Authorization: Bearer <token>)",
            },
        };
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
        Err(Box::new(response))
    }
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

    #[test]
    fn token_and_loopback_rules() {
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let remote: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let open = Auth::new(None);
        assert!(open.check(&HeaderMap::new(), local).is_ok());
        assert!(open.check(&HeaderMap::new(), remote).is_err());

        let locked = Auth::new(Some("s3cret".into()));
        assert!(
            locked.check(&HeaderMap::new(), local).is_err(),
            "a token, once set, is required from loopback too"
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(locked.check(&h, remote).is_ok());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cre7"),
        );
        let denied = locked.check(&h, remote).unwrap_err();
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            denied
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .count(),
            2
        );
    }

    #[test]
    fn basic_auth_carries_the_token_as_its_password() {
        let remote: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let locked = Auth::new(Some("s3cret".into()));
        let basic = |pair: &str| {
            let mut h = HeaderMap::new();
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
            );
            h
        };
        assert!(locked.check(&basic("admin:s3cret"), remote).is_ok());
        assert!(locked.check(&basic(":s3cret"), remote).is_ok());
        assert!(locked.check(&basic("s3cret:"), remote).is_err());
        assert!(locked.check(&basic("admin:wrong"), remote).is_err());
        let mut garbage = HeaderMap::new();
        garbage.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic %%%"));
        assert!(locked.check(&garbage, remote).is_err());
    }

    #[test]
    fn a_new_token_applies_to_every_clone() {
        let remote: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let auth = Auth::new(Some("old".into()));
        let clone = auth.clone();
        let bearer = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
            h
        };
        auth.set_token(Some("new".into()));
        assert!(clone.check(&bearer("old"), remote).is_err());
        assert!(clone.check(&bearer("new"), remote).is_ok());
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
