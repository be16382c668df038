//! The upstream choice for a fill or a pass-through: the key's owners ahead of this
//! node in ring order (origin shielding), whose answers are used only if no purge
//! applied here covers them, then the origin; and whether a non-owner keeps a copy.

use crate::cluster::routing::Role;
use crate::proxy::fill::{self, add_validators, take_peer_version, CLIENT_CONDITIONALS};
use crate::proxy::origin::OriginResponse;
use fanz_protocol::CacheKey;
use http::{header, HeaderMap, Method};

use super::*;

impl Proxy {
    /// Sends a GET or HEAD upstream: through the owners of the key ahead of this node
    /// (origin shielding), then to the origin. `origin_headers` go to the origin;
    /// an owner gets the client's headers with `validators` instead, so it answers
    /// as it would the client (same variant, 304 when they match). Returns the
    /// response and, for a peer's answer, the id of the owner that gave it and the
    /// version of the entry it answered from. An owner's answer that a purge applied
    /// here covers (the owner has not applied it yet) is not used: the next owner
    /// or the origin answers instead.
    pub(super) async fn upstream(
        &self,
        ctx: &Ctx,
        method: &Method,
        origin_headers: &HeaderMap,
        validators: Option<&HeaderMap>,
    ) -> (
        Result<OriginResponse, crate::proxy::origin::OriginError>,
        Option<(String, fanz_protocol::Timestamp)>,
    ) {
        if !ctx.from_peer {
            let routing = &self.routing;
            let owners = routing.owners_ahead(&ctx.primary);
            if !owners.is_empty() {
                let mut headers = ctx.headers.clone();
                for name in CLIENT_CONDITIONALS {
                    headers.remove(name);
                }
                headers.remove(header::RANGE);
                if let Some(v) = validators {
                    add_validators(&mut headers, v);
                }
                let url = format!("{}{}", ctx.target.origin_part, ctx.target.path_and_query);
                for (id, addr) in owners {
                    tracing::debug!(owner = %id, %url, "fetching through the owner");
                    self.metrics.peer_fetches.inc();
                    match routing.fetch(addr, method, &url, &headers).await {
                        Ok(mut response) => {
                            // The owner's view of its cache is not ours.
                            response.headers_mut().remove("cache-status");
                            let answered = response.headers_mut();
                            let version = take_peer_version(answered)
                                .unwrap_or_else(|| self.cache.begin_fill());
                            if fill::covered_here(
                                &self.cache,
                                (&ctx.primary, ctx.key_fields()),
                                &ctx.headers,
                                answered,
                                version,
                            ) {
                                self.metrics.peer_fetch_failures.inc();
                                tracing::debug!(owner = %id, %url, "the owner answered with a copy a purge applied here covers; trying the next owner or the origin");
                                continue;
                            }
                            let answer = OriginResponse {
                                response,
                                permit: None,
                            };
                            return (Ok(answer), Some((id, version)));
                        }
                        Err(e) => {
                            self.metrics.peer_fetch_failures.inc();
                            tracing::warn!(owner = %id, error = %e, "owner fetch failed; trying the next owner or the origin");
                        }
                    }
                }
            }
        }
        tracing::debug!(host = %ctx.target.host, path = %ctx.target.path_and_query, "fetching from the origin");
        let sent = ctx
            .origin
            .send(method, &ctx.target.path_and_query, origin_headers, None)
            .await;
        (sent, None)
    }

    /// Whether a node that does not own `key` keeps a copy of it: on its second
    /// miss within the admission window (one-hit wonders stay with the owners).
    pub(super) fn admit_copy(&self, key: &CacheKey) -> bool {
        if self.routing.role(key) != Role::Other {
            return true;
        }
        let now = self.cache.now_ms();
        if let Some(first) = self.seen_once.get(key) {
            if now.saturating_sub(*first) <= ADMISSION_WINDOW_MS {
                drop(first);
                self.seen_once.remove(key);
                return true;
            }
        }
        if self.seen_once.len() >= ADMISSION_MEMORY {
            self.seen_once.clear();
        }
        self.seen_once.insert(key.clone(), now);
        false
    }
}
