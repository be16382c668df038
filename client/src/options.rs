//! What operations take and return: write options, purge requests, values with
//! their metadata, the retry policy, and how each maps onto the KV HTTP API.

use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};

/// Options of [`crate::Client::set`]. The default is the node's default TTL, no
/// tags, no dependencies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// Freshness lifetime (`Cache-Control: max-age`); the node's default when unset.
    pub ttl: Option<Duration>,
    /// Tags, for purging by tag (`Surrogate-Key`).
    pub tags: Vec<String>,
    /// Keys and tags this value depends on: purging or overwriting any of them
    /// invalidates it (`Fanz-Depends-On`).
    pub depends_on: Vec<Dependency>,
    /// How long after its TTL the value may still be served while it is refreshed.
    pub stale_while_revalidate: Option<Duration>,
    /// Content type kept with the value.
    pub content_type: Option<String>,
}

impl SetOptions {
    /// Options with a TTL.
    pub fn ttl(ttl: Duration) -> Self {
        Self {
            ttl: Some(ttl),
            ..Self::default()
        }
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds a dependency.
    pub fn depends_on(mut self, dependency: Dependency) -> Self {
        self.depends_on.push(dependency);
        self
    }
}

/// Something a value can depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependency {
    /// Another key.
    Key(Vec<u8>),
    /// A tag.
    Tag(String),
}

/// A purge: keys, tags and key prefixes, cached HTTP objects by URL, host or URL
/// prefix, or every HTTP object, all invalidated as one operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purge {
    /// Tags to purge.
    pub tags: Vec<String>,
    /// Keys to purge.
    pub keys: Vec<String>,
    /// Key prefixes to purge (`""`: every key).
    pub prefixes: Vec<String>,
    /// Absolute URLs of cached HTTP objects (every variant of each).
    pub urls: Vec<String>,
    /// Hosts whose every cached HTTP object is purged (`a.example`, either scheme).
    pub hosts: Vec<String>,
    /// Absolute URL prefixes (`https://a.example/img/`): every object under each.
    pub url_prefixes: Vec<String>,
    /// Every cached HTTP object (nothing else may be named with it).
    pub all: bool,
    /// Mark stale (served while refreshed) instead of removing.
    pub soft: bool,
    /// Wait until every member applied it (`wait=all`, the default) or return once
    /// it is durable on the receiving node (`false`).
    pub wait: bool,
}

impl Purge {
    /// A purge of one tag, waiting for every member.
    pub fn tag(tag: impl Into<String>) -> Self {
        Self {
            tags: vec![tag.into()],
            wait: true,
            ..Self::default()
        }
    }

    /// A purge of one key, waiting for every member.
    pub fn key(key: impl Into<String>) -> Self {
        Self {
            keys: vec![key.into()],
            wait: true,
            ..Self::default()
        }
    }

    /// A purge of every cached HTTP object of `host`, waiting for every member.
    pub fn host(host: impl Into<String>) -> Self {
        Self {
            hosts: vec![host.into()],
            wait: true,
            ..Self::default()
        }
    }

    /// Whether it names nothing to purge.
    pub fn is_empty(&self) -> bool {
        !self.all
            && self.tags.is_empty()
            && self.keys.is_empty()
            && self.prefixes.is_empty()
            && self.urls.is_empty()
            && self.hosts.is_empty()
            && self.url_prefixes.is_empty()
    }
}

/// What a purge did, as the receiving node reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct PurgeReport {
    /// Dependent keys it invalidated on the receiving node.
    pub dependents_invalidated: u64,
    /// The cluster-wide purge id (in a cluster), for `GET /purge/{id}`.
    pub purge_id: Option<String>,
    /// The node's whole JSON answer.
    pub raw: serde_json::Value,
}

impl PurgeReport {
    /// Whether every member applied the purge before the node answered (always true
    /// for a lone node). With `wait: true` it always is: a purge that timed out
    /// first is the error [`crate::Error::PurgeIncomplete`], never a report; with
    /// `wait: false` nothing was waited for, and [`Self::pending`] names who had not
    /// applied it yet.
    pub fn complete(&self) -> bool {
        self.raw["cluster"]["complete"].as_bool().unwrap_or(true)
    }

    /// Members that had not applied the purge when the node answered.
    pub fn pending(&self) -> Vec<String> {
        pending_members(&self.raw["cluster"])
    }
}

/// The members a purge report's `cluster` part lists as `pending`.
pub(crate) fn pending_members(cluster: &serde_json::Value) -> Vec<String> {
    cluster["pending"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A value with its metadata, from [`crate::Client::get_with_meta`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The value.
    pub value: Bytes,
    /// Time since it was written.
    pub age: Duration,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its version (the node's hybrid logical clock when it was written; later
    /// writes have higher versions).
    pub version: u64,
    /// Its content type, if one was given.
    pub content_type: Option<String>,
    /// Its freshness lifetime (`max-age`), counted like `age` from when it was
    /// written.
    pub max_age: Option<Duration>,
}

/// Retries with exponential backoff and full jitter (a random wait between zero and
/// `base * 2^attempt`, capped), for idempotent operations only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Backoff before the first retry (upper bound of its jitter).
    pub base: Duration,
    /// Largest backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base: Duration::from_millis(20),
            max: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The wait before retry number `attempt` (1-based), given a uniform random
    /// number in [0, 1).
    pub(crate) fn backoff(&self, attempt: u32, unit_random: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(
                1u32.checked_shl(attempt.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max);
        ceiling.mul_f64(unit_random.clamp(0.0, 1.0))
    }
}

/// A uniform random number in [0, 1) for jitter: no cryptographic quality needed,
/// only independence between clients and calls.
pub(crate) fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Checks a tag as the nodes do: visible ASCII, 1..=1024 bytes.
pub(crate) fn check_tag(tag: &str) -> Result<()> {
    const MAX_TAG_LEN: usize = 1024;
    if tag.len() > MAX_TAG_LEN {
        return Err(Error::TooLarge {
            what: "tag",
            size: tag.len(),
            limit: MAX_TAG_LEN,
        });
    }
    if tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Invalid(format!(
            "tag {tag:?} must be 1 or more visible ASCII characters"
        )));
    }
    Ok(())
}

/// The request headers of a write with `options`.
pub(crate) fn write_headers(options: &SetOptions) -> Result<Vec<(&'static str, String)>> {
    const MAX_LIST: usize = 256;
    let mut headers = Vec::new();
    let mut cache_control = Vec::new();
    if let Some(ttl) = options.ttl {
        cache_control.push(format!("max-age={}", ttl.as_secs()));
    }
    if let Some(swr) = options.stale_while_revalidate {
        cache_control.push(format!("stale-while-revalidate={}", swr.as_secs()));
    }
    if !cache_control.is_empty() {
        headers.push(("cache-control", cache_control.join(", ")));
    }
    if options.tags.len() > MAX_LIST || options.depends_on.len() > MAX_LIST {
        return Err(Error::Invalid(format!(
            "at most {MAX_LIST} tags and {MAX_LIST} dependencies per value"
        )));
    }
    if !options.tags.is_empty() {
        for tag in &options.tags {
            check_tag(tag)?;
        }
        headers.push(("surrogate-key", options.tags.join(" ")));
    }
    if !options.depends_on.is_empty() {
        let mut items = Vec::new();
        for dep in &options.depends_on {
            match dep {
                Dependency::Key(k) if k.is_empty() => {
                    return Err(Error::Invalid("empty dependency key".into()))
                }
                Dependency::Key(k) => items.push(fanz_protocol::percent::encode(k)),
                Dependency::Tag(t) => {
                    check_tag(t)?;
                    items.push(format!("tag:{t}"));
                }
            }
        }
        headers.push(("fanz-depends-on", items.join(" ")));
    }
    if let Some(ct) = &options.content_type {
        headers.push(("content-type", ct.clone()));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn backoff_never_exceeds_its_ceiling(attempt in 1u32..64, r in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            let wait = p.backoff(attempt, r);
            prop_assert!(wait <= p.max);
            let ceiling = p.base.saturating_mul(1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX)).min(p.max);
            prop_assert!(wait <= ceiling);
        }
    }

    #[test]
    fn a_key_named_like_a_tag_is_not_taken_for_one() {
        let h =
            write_headers(&SetOptions::default().depends_on(Dependency::Key(b"tag:x".to_vec())))
                .unwrap();
        assert_eq!(h, vec![("fanz-depends-on", "tag%3Ax".to_string())]);
    }

    #[test]
    fn write_options_map_to_the_kv_api_headers() {
        let options = SetOptions {
            ttl: Some(Duration::from_secs(60)),
            stale_while_revalidate: Some(Duration::from_secs(5)),
            tags: vec!["a".into(), "b".into()],
            depends_on: vec![
                Dependency::Tag("t".into()),
                Dependency::Key(b"user 1".to_vec()),
            ],
            content_type: Some("text/plain".into()),
        };
        assert_eq!(
            write_headers(&options).unwrap(),
            vec![
                (
                    "cache-control",
                    "max-age=60, stale-while-revalidate=5".to_string()
                ),
                ("surrogate-key", "a b".to_string()),
                ("fanz-depends-on", "tag:t user%201".to_string()),
                ("content-type", "text/plain".to_string()),
            ]
        );
    }

    #[test]
    fn bad_tags_are_refused_before_sending() {
        assert!(matches!(
            write_headers(&SetOptions::default().tag("two words")),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            write_headers(&SetOptions::default().tag("x".repeat(1025))),
            Err(Error::TooLarge { what: "tag", .. })
        ));
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
