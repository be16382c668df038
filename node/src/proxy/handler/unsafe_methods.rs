//! Unsafe and other methods: forwarded to the origin, and after a success the URL,
//! same-origin `Location`/`Content-Location` and `Cache-Group-Invalidation` groups
//! invalidated on every node (RFC 9111 §4.4; RFC 9875).

use crate::cluster::replication::Wait;
use crate::http::cache_status::{CacheStatus, Fwd};
use crate::http::{Body, ReqBody};
use crate::invalidation::PurgeTargets;
use crate::proxy::fill;
use crate::proxy::origin::OriginResponse;
use crate::proxy::respond::origin_failure;
use bytes::Bytes;
use http::{header, Method, Response};

use super::*;

/// Response header on the answer to a successful unsafe request: whether the
/// invalidation it caused reached every node (`complete`, `incomplete`, `failed`).
const INVALIDATION: header::HeaderName = header::HeaderName::from_static("fanz-invalidation");

impl Proxy {
    /// Unsafe and other methods: forwarded; a success invalidates the target URI and
    /// the same-origin `Location` / `Content-Location` (RFC 9111 §4.4).
    pub(super) async fn forward_unsafe(&self, ctx: Ctx, body: ReqBody) -> Response<Body> {
        let headers = self.origin_request_headers(&ctx);
        // Through a channel: the client's body type need not be Sync, the origin client's must.
        let deadline = tokio::time::Instant::now() + self.total_timeout;
        let body = crate::http::with_deadline(body, deadline, ());
        let OriginResponse { response, permit } = match ctx
            .origin
            .send(
                &ctx.method,
                &ctx.target.path_and_query,
                &headers,
                Some(body),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return origin_failure(
                    e.status(),
                    &e.to_string(),
                    e.retry_after_secs(),
                    &CacheStatus::forward(Fwd::Method).detail("origin-error"),
                )
            }
        };
        let status = response.status();
        let unsafe_method = !matches!(ctx.method, Method::OPTIONS | Method::TRACE);
        let mut invalidation = None;
        if unsafe_method && (status.is_success() || status.is_redirection()) {
            let mut keys = vec![ctx.primary.clone()];
            for name in [header::LOCATION, header::CONTENT_LOCATION] {
                if let Some(k) = response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|l| ctx.target.sibling_key(l))
                {
                    keys.push(k);
                }
            }
            // RFC 9875: the response names groups its change invalidates.
            let tags = fill::group_list(response.headers(), "cache-group-invalidation")
                .into_iter()
                .filter(|g| crate::http::headers::validate_tag(g).is_ok())
                .map(Bytes::from)
                .collect();
            let targets = PurgeTargets {
                keys,
                tags,
                ..PurgeTargets::default()
            };
            // Applied by every member before the answer returns, like any purge:
            // no node serves the old response once the client has the new one.
            let purged = self
                .replicator
                .purge(&targets, Wait::All)
                .await
                .map(|(_, report)| report.is_none_or(|r| r.complete));
            invalidation = Some(match purged {
                Ok(true) => "complete",
                Ok(false) => "incomplete",
                Err(e) => {
                    tracing::error!(error = %e, "invalidation after an unsafe request failed");
                    "failed"
                }
            });
        }
        let cache_status = CacheStatus::forward(Fwd::Method).fwd_status(status.as_u16());
        let mut answer = self.pass_through(&ctx, response, permit, &cache_status);
        if let Some(done) = invalidation {
            // The origin's answer stands either way; this says whether every node
            // has dropped what the change made stale (`incomplete`: a member did not
            // apply it within `purge_ack_timeout`).
            answer
                .headers_mut()
                .insert(INVALIDATION, http::HeaderValue::from_static(done));
        }
        answer
    }
}
