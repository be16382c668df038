//! Whether a response is stored, and for how long: RFC 9111's answer
//! ([`policy::evaluate`]), then an operator's rule (`ttl`, `ttl_by_status`, `grace`), then
//! the clamps that keep every entry inside its tombstones' retention.

use http::{HeaderMap, Method, StatusCode};

use super::*;
use crate::proxy::policy::{self, Heuristics, RequestFacts};

impl Proxy {
    /// Whether a response to a GET may be stored and for how long
    /// ([`policy::evaluate`]), its lifetime and stale windows clamped to `max_ttl` and
    /// `max_stale` (the retention of the tombstones that may cover it).
    ///
    /// An operator's rule (`ttl`, `ttl_by_status`) replaces the lifetime, and
    /// stores a response refused only for how long it may be kept or its status.
    pub(super) fn evaluate(
        &self,
        ctx: &Ctx,
        facts: RequestFacts,
        status: StatusCode,
        headers: &HeaderMap,
        (request_ms, response_ms): (u64, u64),
    ) -> Result<policy::Storable, policy::NotStored> {
        let limits = self.ttl.get();
        let decided = policy::evaluate(
            &Method::GET,
            facts,
            status,
            headers,
            request_ms,
            response_ms,
            Heuristics::default(),
        );
        let forced = ctx
            .rule
            .as_ref()
            .and_then(|r| r.ttl_for(status.as_u16()))
            .map(|ttl| ttl.as_millis() as u64);
        let decided = match (decided, forced) {
            (Ok(storable), Some(ttl)) => Ok(storable.with_lifetime(ttl)),
            (Err(reason), Some(ttl))
                if reason.overridable() && policy::storable_by_rule(status.as_u16()) =>
            {
                Ok(policy::Storable::forced(ttl, response_ms))
            }
            (decided, _) => decided,
        };
        let grace = ctx.rule.as_ref().and_then(|r| r.grace);
        decided.map(|s| {
            let s = match grace {
                Some(grace) => s.with_grace(grace.as_millis() as u64, headers),
                None => s,
            };
            s.within(
                limits.max_ttl.as_millis() as u64,
                limits.max_stale.as_millis() as u64,
            )
        })
    }
}
