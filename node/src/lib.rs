//! FANZ Edge node.
//!
//! Components, from the bottom up:
//! - [`clock`]: wall clock and hybrid logical clock.
//! - [`config`]: settings from defaults, a TOML file, `FANZ_*` environment variables and
//!   flags; [`cli`]: the command line; [`reload`]: live reloads of the reloadable ones,
//!   into [`live`] values.
//! - [`store`]: memory and disk tiers (foyer) holding checksummed entries.
//! - [`invalidation`]: tombstones, dependency index, purge engine and its durable log.
//! - [`sync_gate`]: whether this node may vouch for its hits (in sync with the
//!   cluster's invalidations), which the cache asks and the cluster feeds.
//! - [`cache`]: lookups, sets and purges over the store and the engine; freshness.
//! - [`proxy`]: pull-through caching of an origin's responses (RFC 9111).
//! - [`cluster`]: membership, owner routing, replicated invalidation, anti-entropy.
//! - [`http`]: HTTP primitives every layer uses (bodies, bounded reads, header
//!   parsing, `Cache-Control` directives).
//! - [`front`]: the listeners (HTTP/1.1, HTTP/2, HTTP/3), per-request tracing,
//!   metrics and access log, the main port's service (KV API, `PURGE`), purges.
//! - [`admin`]: admin API (purge, health, metrics, status page) behind [`auth`]'s
//!   bearer token.
//! - [`tls`]: certificates and rustls configurations.
//! - [`metrics`]: the Prometheus registry.
//! - [`logging`]: the tracing subscriber; request span fields formatted only when
//!   logged. `otlp` (feature): export of request spans.
//! - [`node`]: start-up and the one shutdown path.

#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod front;
pub mod http;
pub mod invalidation;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod node;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod proxy;
pub mod reload;
pub mod store;
pub mod sync_gate;
pub mod tls;
