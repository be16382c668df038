//! Running a purge and answering with what it invalidated: shared by the admin API's
//! `POST /purge` and the main port's `PURGE` method.

use http::{Response, StatusCode};
use serde_json::json;

use super::{json, text, Body};
use std::sync::Arc;

use crate::cache::Cache;
use crate::cluster::replication::{Replicator, Wait};
use crate::invalidation::PurgeTargets;

/// Most dependent keys listed by name in a purge answer (all are counted).
const LISTED_DEPENDENTS: usize = 1000;

/// Purges `targets` and answers 200 with a JSON report once the purge is durable
/// (and, in a cluster with `Wait::All`, applied by every member or timed out: the
/// `cluster` part of the answer says which), 202 at once with `Wait::None`, or 503 if
/// it could not be made durable here.
pub async fn run(
    cache: &Cache,
    replicator: Option<&Arc<Replicator>>,
    targets: &PurgeTargets,
    wait: Wait,
) -> Response<Body> {
    let done = match replicator {
        Some(r) => r
            .purge(targets, wait)
            .await
            .map(|(outcome, report)| (outcome, Some(report))),
        None => cache.purge(targets).await.map(|outcome| (outcome, None)),
    };
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
            let status = if wait == Wait::None && cluster.is_some() {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            let mut body = json!({
                    "status": "ok",
                    "soft": targets.soft,
                    "purged": {
                        "keys": targets.keys.iter().map(show).collect::<Vec<_>>(),
                        "tags": targets.tags.iter().map(|t| String::from_utf8_lossy(t).into_owned()).collect::<Vec<_>>(),
                        "prefixes": targets.prefixes.iter().map(show).collect::<Vec<_>>(),
                    },
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
