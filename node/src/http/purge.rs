//! Running a purge and answering with what it invalidated: shared by the admin API's
//! `POST /purge` and the main port's `PURGE` method.

use http::{Response, StatusCode};
use serde_json::json;

use super::{json, text, Body};
use crate::cache::Cache;
use crate::invalidation::PurgeTargets;

/// Most dependent keys listed by name in a purge answer (all are counted).
const LISTED_DEPENDENTS: usize = 1000;

/// Purges `targets` and answers 200 with a JSON report once the purge is durable,
/// or 503 if it could not be made durable.
pub async fn run(cache: &Cache, targets: &PurgeTargets) -> Response<Body> {
    match cache.purge(targets).await {
        Ok(outcome) => {
            let show =
                |k: &fanz_protocol::CacheKey| String::from_utf8_lossy(k.user_key()).into_owned();
            let listed: Vec<String> = outcome
                .dependents
                .iter()
                .take(LISTED_DEPENDENTS)
                .map(show)
                .collect();
            json(
                StatusCode::OK,
                &json!({
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
                }),
            )
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
