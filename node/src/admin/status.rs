//! The status page on the admin port: `GET /` (HTML), its script and style, and the
//! `GET /status.json` it polls every second. Everything sits behind the admin token
//! (a browser sends it as the HTTP Basic password).
//!
//! Escaping: the page is static; every value it shows arrives as JSON and is put in
//! the document with `textContent`, never as markup, and the Content-Security-Policy
//! allows no inline script, so a key or tag such as `<script>` is shown as text.

use std::sync::atomic::Ordering;

use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use super::AdminService;
use crate::http::{full, json, Body};
use crate::metrics::{LookupLabels, LookupResult, TierLabel};

const PAGE: &str = include_str!("status.html");
const SCRIPT: &str = include_str!("status.js");
const STYLE: &str = include_str!("status.css");

/// Scripts, styles and data from this origin only; no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Paths this module answers (GET only, all behind the admin token).
pub const PATHS: [&str; 4] = ["/", "/status.js", "/status.css", "/status.json"];

impl AdminService {
    /// Answers one of [`PATHS`].
    pub(super) fn status_resource(&self, path: &str) -> Response<Body> {
        let (body, content_type) = match path {
            "/" => (PAGE, "text/html; charset=utf-8"),
            "/status.js" => (SCRIPT, "text/javascript; charset=utf-8"),
            "/status.css" => (STYLE, "text/css; charset=utf-8"),
            _ => return json(StatusCode::OK, &self.status()),
        };
        let mut response = Response::new(full(body));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    /// What the status page shows, as of now.
    pub fn status(&self) -> Value {
        let cluster = self.cluster_report();
        let store = self.cache.store();
        let (disk_written, disk_read) = store.disk_io();
        let lookups = |tier: TierLabel| {
            let count = |result: LookupResult| {
                self.metrics
                    .lookups
                    .get_or_create(&LookupLabels { tier, result })
                    .get()
            };
            json!({
                "hit": count(LookupResult::Hit),
                "stale": count(LookupResult::Stale),
                "expired": count(LookupResult::Expired),
                "invalidated": count(LookupResult::Invalidated),
                "miss": count(LookupResult::Miss),
            })
        };
        json!({
            "node": {
                "id": cluster["node_id"],
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_s": self.started.elapsed().as_secs(),
                "ready": self.ready.load(Ordering::Acquire),
                "alone": self.cluster.is_alone(),
                "replicas": cluster["replicas"],
            },
            "members": cluster["members"],
            "lookups": {
                "memory": lookups(TierLabel::Memory),
                "disk": lookups(TierLabel::Disk),
            },
            "tiers": {
                "memory": {
                    "used_bytes": store.memory_usage(),
                    "capacity_bytes": store.config().memory_capacity,
                },
                "disk": {
                    "written_bytes": disk_written,
                    "read_bytes": disk_read,
                    "capacity_bytes": store.config().disk_capacity,
                },
            },
            "origins": {
                "configured": self.proxy.is_some(),
                "breakers_open": self.proxy.as_ref().map_or(0, |p| p.breakers_open()),
            },
            "purges": self.purger.recent(),
            "rules": self.proxy.as_ref().map_or_else(Vec::new, |p| p.rules_report()),
        })
    }
}
