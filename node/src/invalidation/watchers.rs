//! Clients that keep a near cache (an in-process copy of KV values) watch this
//! node's invalidations. An invalidation made or applied here is acknowledged only
//! once every watcher has confirmed it, or has been dropped for not confirming in
//! time, so a purge acknowledged with `wait=all` has left no near cache able to
//! serve what it covered.
//!
//! Each watcher holds a stream of newline-delimited JSON (served by the admin API):
//! a hello with its id, then `{"seq": N, "keys": [...], "all": bool}` per
//! invalidation (keys percent-encoded; `all` when tags or prefixes were purged, whose
//! reach a client cannot compute), and `{"seq": N}` heartbeats. It confirms with
//! `POST /invalidations/{id}/ack?seq=N`. A watcher dropped here sees its stream end
//! and must empty its near cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use fanz_protocol::{CacheKey, Namespace};
use tokio::sync::{mpsc, watch};

use super::PurgeTargets;

/// Lines buffered per watcher; one that falls this far behind is dropped.
const BUFFER: usize = 1024;

/// What one invalidation means to a near cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// KV keys invalidated (user keys).
    pub keys: Vec<Bytes>,
    /// Whether anything may have been invalidated (tags, prefixes).
    pub all: bool,
}

impl WatchEvent {
    /// The event of a purge that also invalidated `dependents`; `None` when it
    /// touches no KV value.
    pub fn of_purge(targets: &PurgeTargets, dependents: &[CacheKey]) -> Option<Self> {
        let all = !targets.tags.is_empty() || !targets.prefixes.is_empty();
        Self::of_keys(targets.keys.iter().chain(dependents), all)
    }

    /// The event of an overwrite of `key` that invalidated `dependents`.
    pub fn of_overwrite(key: &CacheKey, dependents: &[CacheKey]) -> Option<Self> {
        Self::of_keys(std::iter::once(key).chain(dependents), false)
    }

    fn of_keys<'a>(keys: impl Iterator<Item = &'a CacheKey>, all: bool) -> Option<Self> {
        let keys: Vec<Bytes> = keys
            .filter(|k| k.namespace() == Namespace::Kv)
            .map(|k| Bytes::copy_from_slice(k.user_key()))
            .collect();
        (all || !keys.is_empty()).then_some(Self { keys, all })
    }
}

struct Watcher {
    lines: mpsc::Sender<Bytes>,
    acked: watch::Sender<u64>,
}

/// The watchers of this node.
#[derive(Default)]
pub struct Watchers {
    next_id: AtomicU64,
    /// Sequence of the last event; events are numbered under the `watchers` lock so
    /// every watcher receives them in order.
    seq: AtomicU64,
    watchers: Mutex<HashMap<u64, Watcher>>,
    /// How many watchers there are, readable without the lock: every purge and
    /// overwrite asks, and almost always there are none.
    count: AtomicUsize,
    ack_timeout: Duration,
}

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchers")
            .field("count", &self.count())
            .finish()
    }
}

impl Watchers {
    /// Watchers that must confirm each event within `ack_timeout`.
    pub fn new(ack_timeout: Duration) -> Self {
        Self {
            ack_timeout,
            next_id: AtomicU64::new(1),
            ..Self::default()
        }
    }

    /// Registers a watcher; returns its id and its stream of lines (the first is the
    /// hello).
    pub fn subscribe(&self) -> (u64, mpsc::Receiver<Bytes>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(BUFFER);
        let mut watchers = self.watchers.lock().expect("watchers lock");
        let seq = self.seq.load(Ordering::Acquire);
        let hello = format!("{{\"watcher\":{id},\"seq\":{seq}}}\n");
        let _ = tx.try_send(Bytes::from(hello));
        watchers.insert(
            id,
            Watcher {
                lines: tx,
                acked: watch::channel(seq).0,
            },
        );
        self.count.store(watchers.len(), Ordering::Release);
        tracing::debug!(id, "near-cache watcher subscribed");
        (id, rx)
    }

    /// Records that watcher `id` applied every event up to `seq`; `false` for an
    /// unknown watcher (dropped, or never subscribed).
    pub fn ack(&self, id: u64, seq: u64) -> bool {
        let watchers = self.watchers.lock().expect("watchers lock");
        match watchers.get(&id) {
            Some(w) => {
                w.acked.send_if_modified(|acked| {
                    let newer = seq > *acked;
                    if newer {
                        *acked = seq;
                    }
                    newer
                });
                true
            }
            None => false,
        }
    }

    /// Watchers subscribed now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Sends `event` to every watcher and waits until each confirmed it; a watcher
    /// that does not within the ack timeout (or whose buffer is full) is dropped,
    /// which ends its stream.
    pub async fn publish(&self, event: &WatchEvent) {
        let waits: Vec<(u64, u64, watch::Receiver<u64>)> = {
            let mut watchers = self.watchers.lock().expect("watchers lock");
            if watchers.is_empty() {
                return;
            }
            let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
            let keys: Vec<String> = event
                .keys
                .iter()
                .map(|k| fanz_protocol::percent::encode(k))
                .collect();
            let line = Bytes::from(format!(
                "{}\n",
                serde_json::json!({"seq": seq, "keys": keys, "all": event.all})
            ));
            watchers.retain(|id, w| {
                let sent = w.lines.try_send(line.clone()).is_ok();
                if !sent {
                    tracing::warn!(id, "near-cache watcher fell behind; dropped");
                }
                sent
            });
            self.count.store(watchers.len(), Ordering::Release);
            watchers
                .iter()
                .map(|(id, w)| (*id, seq, w.acked.subscribe()))
                .collect()
        };
        let mut late = Vec::new();
        for (id, seq, mut acked) in waits {
            let confirmed =
                tokio::time::timeout(self.ack_timeout, acked.wait_for(|a| *a >= seq)).await;
            if !matches!(confirmed, Ok(Ok(_))) {
                late.push(id);
            }
        }
        if !late.is_empty() {
            let mut watchers = self.watchers.lock().expect("watchers lock");
            for id in late {
                tracing::warn!(
                    id,
                    "near-cache watcher did not confirm an invalidation in time; dropped"
                );
                watchers.remove(&id);
            }
            self.count.store(watchers.len(), Ordering::Release);
        }
    }

    /// Drops every watcher (shutdown): their streams end, and their near caches
    /// empty themselves.
    pub fn close(&self) {
        self.watchers.lock().expect("watchers lock").clear();
        self.count.store(0, Ordering::Release);
    }

    /// Sends every watcher a heartbeat with the current sequence (their lease: a near
    /// cache serves only while heartbeats arrive).
    pub fn heartbeat(&self) {
        let mut watchers = self.watchers.lock().expect("watchers lock");
        if watchers.is_empty() {
            return;
        }
        let seq = self.seq.load(Ordering::Acquire);
        let line = Bytes::from(format!("{{\"seq\":{seq}}}\n"));
        watchers.retain(|_, w| !w.lines.is_closed() && w.lines.try_send(line.clone()).is_ok());
        self.count.store(watchers.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str) -> CacheKey {
        CacheKey::kv(k.as_bytes())
    }

    #[test]
    fn events_name_kv_keys_and_widen_to_all_for_tags_and_prefixes() {
        let keys = PurgeTargets {
            keys: vec![kv("a b"), CacheKey::new(Namespace::Http, b"/page")],
            ..PurgeTargets::default()
        };
        let e = WatchEvent::of_purge(&keys, &[kv("dep")]).unwrap();
        assert_eq!(e.keys, vec![Bytes::from("a b"), Bytes::from("dep")]);
        assert!(!e.all);
        let tags = PurgeTargets {
            tags: vec![Bytes::from("t")],
            ..PurgeTargets::default()
        };
        assert!(WatchEvent::of_purge(&tags, &[]).unwrap().all);
        let http_only = PurgeTargets {
            keys: vec![CacheKey::new(Namespace::Http, b"/page")],
            ..PurgeTargets::default()
        };
        assert_eq!(WatchEvent::of_purge(&http_only, &[]), None);
        assert_eq!(
            WatchEvent::of_overwrite(&kv("k"), &[]).unwrap().keys,
            vec![Bytes::from("k")]
        );
    }

    #[tokio::test]
    async fn a_publish_waits_for_the_ack_and_drops_a_silent_watcher() {
        let watchers = std::sync::Arc::new(Watchers::new(Duration::from_millis(200)));
        let (good, mut good_rx) = watchers.subscribe();
        let (_silent, _silent_rx) = watchers.subscribe();
        assert!(good_rx.recv().await.unwrap().starts_with(b"{\"watcher\""));
        let acker = {
            let watchers = watchers.clone();
            tokio::spawn(async move {
                let line = good_rx.recv().await.unwrap();
                let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
                assert_eq!(v["keys"], serde_json::json!(["k%2F1"]));
                assert!(watchers.ack(good, v["seq"].as_u64().unwrap()));
                good_rx
            })
        };
        let started = std::time::Instant::now();
        watchers
            .publish(&WatchEvent {
                keys: vec![Bytes::from("k/1")],
                all: false,
            })
            .await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(190),
            "did not wait for the silent one: {waited:?}"
        );
        let _rx = acker.await.unwrap();
        assert_eq!(
            watchers.count(),
            1,
            "the silent watcher is dropped, the good one kept"
        );
        // With only confirming watchers left, a publish returns as soon as they ack.
        assert!(!watchers.ack(999, 1), "unknown watcher");
    }

    #[tokio::test]
    async fn without_watchers_a_publish_costs_nothing() {
        let watchers = Watchers::new(Duration::from_secs(10));
        let started = std::time::Instant::now();
        watchers
            .publish(&WatchEvent {
                keys: vec![],
                all: true,
            })
            .await;
        assert!(started.elapsed() < Duration::from_millis(50));
    }
}
