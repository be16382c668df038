//! A 304 answering a revalidation: the stored response's fields updated (RFC 9111
//! §3.2, §4.3.4), its freshness recomputed, stored again and served.

use crate::cache::Found;
use crate::http::cache_status::{CacheStatus, Fwd};
use crate::http::Body;
use crate::proxy::fill;
use crate::proxy::flight::{Leader, Outcome};
use crate::proxy::policy::RequestFacts;
use crate::proxy::respond::stored_headers;
use bytes::Bytes;
use fanz_protocol::Entry;
use http::{header, HeaderMap, Response, StatusCode};

use super::*;

impl Proxy {
    /// A 304 answered a revalidation: merge its headers into the stored response,
    /// recompute freshness, store, and serve (RFC 9111 §4.3.4).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn refreshed(
        &self,
        ctx: &Ctx,
        leader: Leader,
        stale: &Found,
        update: &HeaderMap,
        version: fanz_protocol::Timestamp,
        request_ms: u64,
        response_ms: u64,
    ) -> Response<Body> {
        let old = &stale.entry;
        let mut merged = stored_headers(&old.meta);
        // §3.2: every field of the 304 replaces the stored one, except those never
        // stored (hop-by-hop, aimed at this cache, `Age`) and Content-Length.
        let update = self.shaping.storable_headers(update, &[]);
        for name in update.keys() {
            if name != header::CONTENT_LENGTH {
                merged.remove(name);
                for v in update.get_all(name) {
                    merged.append(name.clone(), v.clone());
                }
            }
        }
        let status = StatusCode::from_u16(old.meta.status).unwrap_or(StatusCode::OK);
        let facts = RequestFacts {
            authorization: false,
            no_store: false,
        };
        let cache_status;
        let revalidated = CacheStatus::forward(Fwd::Stale).fwd_status(304);
        match self.evaluate(ctx, facts, status, &merged, (request_ms, response_ms)) {
            Ok(storable) => {
                let plan = fill::plan(
                    &self.shaping_for(ctx),
                    (&ctx.primary, ctx.key_fields()),
                    &ctx.headers,
                    status,
                    &merged,
                    &storable,
                    version,
                    response_ms,
                );
                cache_status = revalidated.ttl(plan.head.ttl_secs);
                leader.flight().publish(Outcome::Shared(plan.head.clone()));
                // Stored before the body goes out, as in the pump.
                if let Some((primary, marker)) = plan.marker {
                    let _ = self.cache.store_response(primary, marker).await;
                }
                let entry = Entry {
                    meta: plan.meta,
                    body: old.body.clone(),
                };
                if let Err(e) = self.cache.store_response(plan.store_key, entry).await {
                    tracing::error!(error = %e, "storing a revalidated response failed");
                }
                leader.stop_joining();
                leader.flight().push(old.body.clone()).await;
            }
            Err(reason) => {
                leader.flight().publish(Outcome::Uncacheable);
                cache_status = revalidated.detail(reason.as_str());
            }
        }
        leader.flight().finish(Ok(())).await;
        leader.complete();
        let mut meta = old.meta.clone();
        meta.headers = merged
            .iter()
            .map(|(n, v)| {
                (
                    Bytes::copy_from_slice(n.as_str().as_bytes()),
                    Bytes::copy_from_slice(v.as_bytes()),
                )
            })
            .collect();
        let age_secs = meta.age_ms(self.cache.now_ms()) / 1000;
        self.shaping_for(ctx).entry_response(
            &ctx.method,
            &ctx.headers,
            &meta,
            &old.body,
            age_secs,
            &cache_status,
        )
    }
}
