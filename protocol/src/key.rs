//! Cache keys and invalidation ids.
//!
//! A [`CacheKey`] is the namespaced key an entry is stored under: one namespace byte,
//! then the key bytes, so KV keys and HTTP cache keys can never collide.
//!
//! An [`InvalidationId`] names something a purge can target: a key or a tag. Keys and
//! tags share one id space (a kind byte, then the bytes), which lets the invalidation
//! engine keep one tombstone table and one dependency index for both.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Which key space a cache key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// Keys set by applications through the KV API or the client library.
    Kv,
    /// Keys of cached HTTP responses (normalised URL plus method class).
    Http,
}

impl Namespace {
    const fn byte(self) -> u8 {
        match self {
            Namespace::Kv => b'K',
            Namespace::Http => b'H',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'K' => Some(Namespace::Kv),
            b'H' => Some(Namespace::Http),
            _ => None,
        }
    }
}

/// A namespaced key: what the store is indexed by.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(Bytes);

impl CacheKey {
    /// The key `key` in namespace `ns`.
    pub fn new(ns: Namespace, key: &[u8]) -> Self {
        let mut b = BytesMut::with_capacity(1 + key.len());
        b.put_u8(ns.byte());
        b.put_slice(key);
        CacheKey(b.freeze())
    }

    /// A key whose user part is `parts` joined, in one allocation.
    pub fn new_joined(ns: Namespace, parts: &[&[u8]]) -> Self {
        let len = parts.iter().map(|p| p.len()).sum::<usize>();
        let mut b = BytesMut::with_capacity(1 + len);
        b.put_u8(ns.byte());
        for part in parts {
            b.put_slice(part);
        }
        CacheKey(b.freeze())
    }

    /// A key in the KV namespace.
    pub fn kv(key: &[u8]) -> Self {
        Self::new(Namespace::Kv, key)
    }

    /// Rebuilds a key from its encoded form; `None` if the namespace byte is unknown.
    pub fn from_encoded(raw: Bytes) -> Option<Self> {
        Namespace::from_byte(*raw.first()?)?;
        Some(CacheKey(raw))
    }

    /// The encoded form: namespace byte, then the key.
    pub fn encoded(&self) -> &Bytes {
        &self.0
    }

    /// The namespace.
    pub fn namespace(&self) -> Namespace {
        // Invariant: every constructor writes a known namespace byte first.
        Namespace::from_byte(self.0[0]).expect("CacheKey always starts with a namespace byte")
    }

    /// The key without its namespace byte.
    pub fn user_key(&self) -> &[u8] {
        &self.0[1..]
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}:{}",
            self.namespace(),
            String::from_utf8_lossy(self.user_key())
        )
    }
}

/// What an [`InvalidationId`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A cache key.
    Key,
    /// A tag (surrogate key).
    Tag,
}

/// A key or a tag, as the invalidation engine sees it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvalidationId(Bytes);

impl InvalidationId {
    const KEY: u8 = b'k';
    const TAG: u8 = b't';

    /// The id of a cache key.
    pub fn key(key: &CacheKey) -> Self {
        let mut b = BytesMut::with_capacity(1 + key.0.len());
        b.put_u8(Self::KEY);
        b.put_slice(&key.0);
        InvalidationId(b.freeze())
    }

    /// The id of a tag.
    pub fn tag(tag: &[u8]) -> Self {
        let mut b = BytesMut::with_capacity(1 + tag.len());
        b.put_u8(Self::TAG);
        b.put_slice(tag);
        InvalidationId(b.freeze())
    }

    /// The id of every key starting with `prefix` sorts at or after this one and
    /// starts with its bytes: the lower bound of a prefix range scan.
    pub fn key_prefix(prefix: &CacheKey) -> Self {
        Self::key(prefix)
    }

    /// Rebuilds an id from its encoded form; `None` if it is not a valid id.
    pub fn from_encoded(raw: Bytes) -> Option<Self> {
        match *raw.first()? {
            Self::TAG => Some(InvalidationId(raw)),
            Self::KEY => {
                CacheKey::from_encoded(raw.slice(1..))?;
                Some(InvalidationId(raw))
            }
            _ => None,
        }
    }

    /// The encoded form.
    pub fn encoded(&self) -> &Bytes {
        &self.0
    }

    /// Whether this names a key or a tag.
    pub fn kind(&self) -> IdKind {
        if self.0[0] == Self::KEY {
            IdKind::Key
        } else {
            IdKind::Tag
        }
    }

    /// The key this id names, if it names a key.
    pub fn as_key(&self) -> Option<CacheKey> {
        match self.kind() {
            IdKind::Key => Some(CacheKey(self.0.slice(1..))),
            IdKind::Tag => None,
        }
    }

    /// Whether this is a key id whose key starts with `prefix` (same namespace).
    pub fn is_key_with_prefix(&self, prefix: &CacheKey) -> bool {
        self.0[0] == Self::KEY && self.0[1..].starts_with(&prefix.0)
    }
}

impl fmt::Debug for InvalidationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_key() {
            Some(key) => write!(f, "key {key:?}"),
            None => write!(f, "tag {}", String::from_utf8_lossy(&self.0[1..])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joined_key_is_the_key_of_its_parts_concatenated() {
        assert_eq!(
            CacheKey::new_joined(Namespace::Http, &[b"http://a", b"/b?c", b""]),
            CacheKey::new(Namespace::Http, b"http://a/b?c")
        );
    }

    #[test]
    fn kv_and_http_keys_never_collide() {
        let kv = CacheKey::new(Namespace::Kv, b"/a");
        let http = CacheKey::new(Namespace::Http, b"/a");
        assert_ne!(kv, http);
        assert_ne!(InvalidationId::key(&kv), InvalidationId::key(&http));
    }

    #[test]
    fn a_tag_and_a_key_with_the_same_text_are_different_ids() {
        let k = InvalidationId::key(&CacheKey::kv(b"x"));
        let t = InvalidationId::tag(b"x");
        assert_ne!(k, t);
        assert_eq!(k.kind(), IdKind::Key);
        assert_eq!(t.kind(), IdKind::Tag);
        assert_eq!(k.as_key(), Some(CacheKey::kv(b"x")));
    }

    #[test]
    fn prefix_matching_stays_in_the_namespace() {
        let id = InvalidationId::key(&CacheKey::kv(b"user:1"));
        assert!(id.is_key_with_prefix(&CacheKey::kv(b"user:")));
        assert!(!id.is_key_with_prefix(&CacheKey::new(Namespace::Http, b"user:")));
        assert!(!InvalidationId::tag(b"user:1").is_key_with_prefix(&CacheKey::kv(b"")));
    }

    #[test]
    fn decoding_rejects_unknown_kinds() {
        assert!(InvalidationId::from_encoded(Bytes::from_static(b"zabc")).is_none());
        assert!(InvalidationId::from_encoded(Bytes::from_static(b"kZabc")).is_none());
        assert!(InvalidationId::from_encoded(Bytes::new()).is_none());
        assert!(InvalidationId::from_encoded(Bytes::from_static(b"kKabc")).is_some());
    }
}
