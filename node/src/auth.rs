//! Who may purge and use the admin API: a bearer token compared in constant time, or,
//! when no token is configured, loopback clients only.

use std::net::SocketAddr;

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::http::{text, Body};

/// The node's admin credential.
#[derive(Clone)]
pub struct Auth {
    token: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.token.is_some() {
            "Auth(token)"
        } else {
            "Auth(loopback only)"
        })
    }
}

impl Auth {
    /// Requires `token` when set; otherwise admits loopback clients only.
    pub fn new(token: Option<String>) -> Self {
        Self { token }
    }

    /// `Ok` when the request may purge; otherwise the 401 to answer.
    pub fn check(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<(), Box<Response<Body>>> {
        let reason = match &self.token {
            None if peer.ip().is_loopback() => return Ok(()),
            None => "no admin token is configured, so only loopback clients may do this",
            Some(token) => {
                let presented = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                match presented {
                    Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => return Ok(()),
                    Some(_) => "invalid bearer token",
                    None => "missing bearer token (Authorization: Bearer <token>)",
                }
            }
        };
        let mut response = text(StatusCode::UNAUTHORIZED, reason);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"fanz\""),
        );
        Err(Box::new(response))
    }
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
        assert!(denied.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
