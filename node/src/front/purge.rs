//! Running a purge and answering with what it invalidated ([`Purger`]): shared by
//! the admin API's `POST /purge` and the main port's `PURGE` method, which also
//! remembers the last purges made here for the status page.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::json;

use crate::cluster::replication::{PurgeReport, Replicator, Wait};
use crate::http::{json, text, Body};
use crate::invalidation::{PurgeOutcome, PurgeTargets};
use fanz_protocol::Namespace;

/// Most dependent keys listed by name in a purge answer (all are counted).
const LISTED_DEPENDENTS: usize = 1000;
/// Purges the status page lists.
const REMEMBERED_PURGES: usize = 50;
/// Ids of each kind named in a remembered purge (the rest are counted).
const REMEMBERED_IDS: usize = 5;

/// Makes purges, on this node alone or across the cluster, and remembers the last
/// few for the status page.
#[derive(Debug)]
pub struct Purger {
    replicator: Arc<Replicator>,
    recent: Mutex<VecDeque<RecentPurge>>,
}

/// A purge made on this node, as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RecentPurge {
    /// When it was made, Unix ms.
    pub at_ms: u64,
    /// `admin` (`POST /purge`) or `PURGE` (the main port).
    pub via: &'static str,
    /// Soft (mark stale) rather than hard.
    pub soft: bool,
    /// The first few keys, tags and prefixes named.
    pub keys: Vec<String>,
    /// See `keys`.
    pub tags: Vec<String>,
    /// See `keys`.
    pub prefixes: Vec<String>,
    /// Ids named beyond those listed.
    pub more: usize,
    /// Dependent keys invalidated here.
    pub dependents: usize,
    /// Time until the answer (durable here; with `wait=all`, applied or fenced
    /// everywhere), ms. `None` if it failed.
    pub answered_ms: Option<f64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Its progress across the cluster (as `GET /purge/{id}` shows it), when the
    /// node is in one.
    pub cluster: Option<PurgeReport>,
}

impl Purger {
    /// Purges through `replicator`: on every member, or here alone in a cluster of
    /// one.
    pub fn new(replicator: Arc<Replicator>) -> Self {
        Self {
            replicator,
            recent: Mutex::new(VecDeque::with_capacity(REMEMBERED_PURGES)),
        }
    }

    /// The last purges made here, newest first, with their cluster progress as it
    /// stands now.
    pub fn recent(&self) -> Vec<RecentPurge> {
        let mut list: Vec<RecentPurge> = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .cloned()
            .collect();
        for purge in &mut list {
            if let Some(id) = purge.cluster.as_ref().map(|c| c.id.clone()) {
                purge.cluster = self.replicator.report(&id).or(purge.cluster.take());
            }
        }
        list
    }

    fn remember(&self, purge: RecentPurge) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == REMEMBERED_PURGES {
            recent.pop_front();
        }
        recent.push_back(purge);
    }

    /// Purges `targets` and answers 200 with a JSON report once the purge is durable
    /// (and, in a cluster with `Wait::All`, applied or fenced by every member), 504
    /// with the report (`"status": "incomplete"`, the missing members `pending`) when
    /// `Wait::All` timed out first, 202 at once with `Wait::None`, or 503 if it could
    /// not be made durable here. `via` names the API for the status
    /// page.
    pub async fn run(
        &self,
        targets: &PurgeTargets,
        wait: Wait,
        via: &'static str,
    ) -> Response<Body> {
        let started = Instant::now();
        let at_ms = crate::clock::now_ms();
        let done = self.replicator.purge(targets, wait).await;
        let show = |k: &fanz_protocol::CacheKey| String::from_utf8_lossy(k.user_key()).into_owned();
        let show_tag = |t: &bytes::Bytes| String::from_utf8_lossy(t).into_owned();
        let named = targets.keys.len() + targets.tags.len() + targets.prefixes.len();
        let listed = |n: usize| n.min(REMEMBERED_IDS);
        let mut remembered = RecentPurge {
            at_ms,
            via,
            soft: targets.soft,
            keys: targets.keys.iter().take(REMEMBERED_IDS).map(show).collect(),
            tags: targets
                .tags
                .iter()
                .take(REMEMBERED_IDS)
                .map(show_tag)
                .collect(),
            prefixes: targets
                .prefixes
                .iter()
                .take(REMEMBERED_IDS)
                .map(show)
                .collect(),
            more: named
                - listed(targets.keys.len())
                - listed(targets.tags.len())
                - listed(targets.prefixes.len()),
            dependents: 0,
            answered_ms: None,
            error: None,
            cluster: None,
        };
        match &done {
            Ok((outcome, cluster)) => {
                remembered.dependents = outcome.dependents.len();
                remembered.answered_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                remembered.cluster = cluster.clone();
            }
            Err(e) => remembered.error = Some(e.to_string()),
        }
        self.remember(remembered);
        answer(targets, wait, done)
    }
}

/// What a purge named, as its answer lists it: KV keys and prefixes, HTTP URLs
/// among the keys, HTTP URL prefixes apart (hosts as one per scheme), and `all`
/// when every HTTP object was purged.
fn purged_json(targets: &PurgeTargets) -> serde_json::Value {
    let show = |k: &fanz_protocol::CacheKey| String::from_utf8_lossy(k.user_key()).into_owned();
    let (http, kv): (Vec<_>, Vec<_>) = targets
        .prefixes
        .iter()
        .partition(|p| p.namespace() == Namespace::Http);
    let all = http.iter().any(|p| p.user_key().is_empty());
    let mut purged = json!({
        "keys": targets.keys.iter().map(show).collect::<Vec<_>>(),
        "tags": targets.tags.iter().map(|t| String::from_utf8_lossy(t).into_owned()).collect::<Vec<_>>(),
        "prefixes": kv.into_iter().map(show).collect::<Vec<_>>(),
    });
    let url_prefixes: Vec<String> = http
        .into_iter()
        .filter(|p| !p.user_key().is_empty())
        .map(show)
        .collect();
    if !url_prefixes.is_empty() {
        purged["url_prefixes"] = json!(url_prefixes);
    }
    if all {
        purged["all"] = json!(true);
    }
    purged
}

fn answer(
    targets: &PurgeTargets,
    wait: Wait,
    done: Result<(PurgeOutcome, Option<PurgeReport>), crate::cache::CacheError>,
) -> Response<Body> {
    match done {
        Ok((outcome, cluster)) => {
            let show =
                |k: &fanz_protocol::CacheKey| String::from_utf8_lossy(k.user_key()).into_owned();
            let listed: Vec<String> = outcome
                .dependents
                .iter()
                .take(LISTED_DEPENDENTS)
                .map(show)
                .collect();
            let incomplete = wait == Wait::All && cluster.as_ref().is_some_and(|r| !r.complete);
            let status = if incomplete {
                // Durable here, retried to the missing members, but not yet the
                // promise `wait=all` asked for: not a success.
                StatusCode::GATEWAY_TIMEOUT
            } else if wait == Wait::None && cluster.is_some() {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            let mut body = json!({
                    "status": if incomplete { "incomplete" } else { "ok" },
                    "soft": targets.soft,
                    "purged": purged_json(targets),
                    "dependents_invalidated": outcome.dependents.len(),
                    "dependents": listed,
                    "tombstones": outcome.tombstones,
                    "hlc": outcome.at.as_u64().to_string(),
                    "durable": true,
            });
            if let Some(report) = cluster {
                body["purge_id"] = json!(report.id);
                body["cluster"] = serde_json::to_value(&report).unwrap_or_default();
            }
            json(status, &body)
        }
        Err(e @ crate::cache::CacheError::TooLong(_)) => {
            text(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => {
            tracing::error!(error = %e, "purge could not be made durable");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("purge applied in memory but not made durable: {e}"),
            )
        }
    }
}
