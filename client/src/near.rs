//! The near cache: an optional in-process copy of recently read values, kept
//! coherent by the node it watches (`GET /invalidations` on a seed's admin API).
//!
//! Coherence rules, each closing one way to serve a purged value:
//! - an invalidation is applied here *before* it is confirmed to the node, and the
//!   node acknowledges a purge only after every watcher confirmed it (or was
//!   dropped), so a purge acknowledged with `wait=all` has already emptied this cache;
//! - entries are served only while the watch is up and a heartbeat (every 100 ms)
//!   arrived within the lease (300 ms); a node drops a watcher that does not confirm
//!   within 500 ms, so a dropped watcher has stopped serving by then;
//! - a value read from a node is kept only if no invalidation arrived while it was
//!   being read (the generation check), so a read racing a purge cannot put the old
//!   value back;
//! - entries expire with the value's own freshness (`max-age` less `Age`) or the
//!   configured limit, whichever is sooner.
//!
//! An overwrite made by another client reaches the cache as soon as the watched node
//! applies it (milliseconds); only purges carry the acknowledged guarantee.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::error::Result as ClientResult;
use crate::options::Value;

/// How long after the last heartbeat entries may still be served.
const LEASE: Duration = Duration::from_millis(300);
/// Pause before watching again after the watch ended.
const REWATCH_DELAY: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Vec<u8>, (Value, Instant)>,
    /// Bumped by every invalidation and reset.
    generation: u64,
    /// Last heartbeat or event, while the watch is up.
    heard: Option<Instant>,
}

/// The near cache's entries and watch state.
#[derive(Debug)]
pub(crate) struct NearCache {
    state: Mutex<State>,
    capacity: usize,
    max_ttl: Duration,
}

impl NearCache {
    pub(crate) fn new(capacity: usize, max_ttl: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            max_ttl,
        }
    }

    /// A value that may be served now.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Value> {
        let state = self.state.lock().expect("near cache lock");
        let heard = state.heard?;
        if heard.elapsed() > LEASE {
            return None;
        }
        let (value, expires) = state.entries.get(key)?;
        (Instant::now() < *expires).then(|| value.clone())
    }

    /// The generation to pass to [`NearCache::keep`] after a read.
    pub(crate) fn generation(&self) -> u64 {
        self.state.lock().expect("near cache lock").generation
    }

    /// Keeps `value` read for `key`, unless an invalidation arrived since `generation`
    /// was taken or the watch is down.
    pub(crate) fn keep(&self, key: &[u8], value: &Value, generation: u64) {
        let lifetime = value
            .max_age
            .map_or(Duration::ZERO, |m| m.saturating_sub(value.age))
            .min(self.max_ttl);
        if lifetime.is_zero() {
            return;
        }
        let mut state = self.state.lock().expect("near cache lock");
        if state.generation != generation || state.heard.is_none() {
            return;
        }
        if state.entries.len() >= self.capacity && !state.entries.contains_key(key) {
            // Full: drop an arbitrary entry (a near cache holds hot keys briefly).
            if let Some(victim) = state.entries.keys().next().cloned() {
                state.entries.remove(&victim);
            }
        }
        state
            .entries
            .insert(key.to_vec(), (value.clone(), Instant::now() + lifetime));
    }

    /// Forgets `key` (this client wrote or deleted it).
    pub(crate) fn forget(&self, key: &[u8]) {
        let mut state = self.state.lock().expect("near cache lock");
        state.generation += 1;
        state.entries.remove(key);
    }

    fn invalidate(&self, keys: &[Vec<u8>], all: bool) {
        let mut state = self.state.lock().expect("near cache lock");
        state.generation += 1;
        if all {
            state.entries.clear();
        } else {
            for key in keys {
                state.entries.remove(key);
            }
        }
        state.heard = Some(Instant::now());
    }

    fn heard(&self) {
        self.state.lock().expect("near cache lock").heard = Some(Instant::now());
    }

    /// The watch ended: nothing may be served until a new one is up.
    fn reset(&self) {
        let mut state = self.state.lock().expect("near cache lock");
        state.generation += 1;
        state.entries.clear();
        state.heard = None;
    }

    /// Entries held (for tests and stats).
    pub(crate) fn len(&self) -> usize {
        self.state.lock().expect("near cache lock").entries.len()
    }
}

/// One line of the watch stream.
#[derive(Debug, serde::Deserialize)]
struct Line {
    #[serde(default)]
    watcher: Option<u64>,
    seq: u64,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
}

/// What a watch needs of the client that owns the near cache: the nodes to watch
/// and the two admin calls. The client implements it; this module knows nothing
/// else of the client.
pub(crate) trait WatchLink: Send + Sync + 'static {
    /// Admin `host:port` of each seed.
    fn seeds(&self) -> &[String];
    /// Opens a watch on `seed` (`GET /invalidations`): its stream of lines.
    fn open_watch(
        &self,
        seed: &str,
    ) -> impl std::future::Future<Output = ClientResult<hyper::body::Incoming>> + Send;
    /// Confirms to `seed` that watcher `id` applied every invalidation up to `seq`.
    fn confirm(
        &self,
        seed: &str,
        id: u64,
        seq: u64,
    ) -> impl std::future::Future<Output = ClientResult<()>> + Send;
}

/// Keeps a watch open on one of the seeds for as long as the client lives,
/// applying and confirming every invalidation.
pub(crate) async fn watch<L: WatchLink>(inner: Weak<L>, near: Arc<NearCache>) {
    let mut turn = 0usize;
    loop {
        let Some(client) = inner.upgrade() else {
            return;
        };
        let seeds = client.seeds().to_vec();
        let seed = seeds[turn % seeds.len()].clone();
        turn += 1;
        let body = client.open_watch(&seed).await;
        drop(client);
        match body {
            Ok(body) => {
                if let Err(e) = follow(&inner, &near, &seed, body).await {
                    tracing::debug!(%seed, error = %e, "near-cache watch ended");
                }
            }
            Err(e) => tracing::debug!(%seed, error = %e, "near-cache watch failed"),
        }
        near.reset();
        tokio::time::sleep(REWATCH_DELAY).await;
    }
}

/// Reads the watch stream until it ends.
async fn follow<L: WatchLink>(
    inner: &Weak<L>,
    near: &NearCache,
    seed: &str,
    mut body: hyper::body::Incoming,
) -> Result<(), String> {
    let mut buffer = Vec::new();
    let mut watcher = None;
    loop {
        // A silent stream is a dead one: the node sends a heartbeat every 100 ms.
        let frame = tokio::time::timeout(LEASE * 3, body.frame())
            .await
            .map_err(|_| "no heartbeat".to_string())?;
        let Some(frame) = frame else {
            return Err("stream ended".into());
        };
        let frame = frame.map_err(|e| e.to_string())?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line: Line = serde_json::from_slice(&line).map_err(|e| format!("bad line: {e}"))?;
            if let Some(id) = line.watcher {
                watcher = Some(id);
                near.heard();
                continue;
            }
            let Some(id) = watcher else {
                return Err("no hello".into());
            };
            match line.keys {
                None => near.heard(),
                Some(keys) => {
                    let keys: Vec<Vec<u8>> = keys
                        .iter()
                        .filter_map(|k| fanz_protocol::percent::decode(k).ok())
                        .collect();
                    near.invalidate(&keys, line.all);
                    let Some(client) = inner.upgrade() else {
                        return Ok(());
                    };
                    client
                        .confirm(seed, id, line.seq)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn value(max_age: u64) -> Value {
        Value {
            value: Bytes::from("v"),
            age: Duration::ZERO,
            tags: vec![],
            version: 1,
            content_type: None,
            max_age: Some(Duration::from_secs(max_age)),
        }
    }

    #[test]
    fn nothing_is_served_without_a_live_watch() {
        let near = NearCache::new(10, Duration::from_secs(60));
        let g = near.generation();
        near.keep(b"k", &value(60), g);
        assert_eq!(near.get(b"k"), None, "kept before the watch was up");
        near.heard();
        let g = near.generation();
        near.keep(b"k", &value(60), g);
        assert_eq!(near.get(b"k").unwrap().value, Bytes::from("v"));
        near.reset();
        assert_eq!(near.get(b"k"), None);
        assert_eq!(near.len(), 0);
    }

    #[test]
    fn a_read_racing_an_invalidation_is_not_kept() {
        let near = NearCache::new(10, Duration::from_secs(60));
        near.heard();
        let before = near.generation();
        near.invalidate(&[b"other".to_vec()], false);
        near.keep(b"k", &value(60), before);
        assert_eq!(near.get(b"k"), None);
    }

    #[test]
    fn invalidations_remove_keys_or_everything() {
        let near = NearCache::new(10, Duration::from_secs(60));
        near.heard();
        for k in [&b"a"[..], b"b", b"c"] {
            let g = near.generation();
            near.keep(k, &value(60), g);
        }
        near.invalidate(&[b"a".to_vec()], false);
        assert!(near.get(b"a").is_none() && near.get(b"b").is_some());
        near.invalidate(&[], true);
        assert_eq!(near.len(), 0);
    }

    #[test]
    fn the_lease_runs_out_without_heartbeats() {
        let near = NearCache::new(10, Duration::from_secs(60));
        near.heard();
        let g = near.generation();
        near.keep(b"k", &value(60), g);
        std::thread::sleep(LEASE + Duration::from_millis(50));
        assert_eq!(near.get(b"k"), None);
        near.heard();
        assert!(near.get(b"k").is_some());
    }

    #[test]
    fn capacity_and_freshness_bound_what_is_kept() {
        let near = NearCache::new(2, Duration::from_secs(60));
        near.heard();
        for k in [&b"a"[..], b"b", b"c"] {
            let g = near.generation();
            near.keep(k, &value(60), g);
        }
        assert_eq!(near.len(), 2);
        let g = near.generation();
        near.keep(b"stale", &value(0), g);
        assert!(
            near.get(b"stale").is_none(),
            "a value with no freshness left is not kept"
        );
    }
}
