//! FANZ Edge node.
//!
//! Components:
//! - [`config`]: settings from defaults, a TOML file, `FANZ_*` environment variables and flags.
//! - [`clock`]: wall clock and hybrid logical clock.
//! - [`store`]: memory and disk tiers (foyer) holding checksummed entries.
//! - [`invalidation`]: tombstones, dependency index, purge engine and its durable log.
//! - [`cache`]: lookups, sets and purges over the store and the engine; freshness.
//! - [`http`]: the HTTP front end (KV API, `PURGE`) and the shared connection loop.
//! - [`admin`]: admin API (purge, health, metrics) behind a bearer token.
//! - [`metrics`]: the Prometheus registry.
//! - [`logging`]: the tracing subscriber; request span fields formatted only when logged.
//! - [`node`]: start-up and the one shutdown path.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod http;
pub mod invalidation;
pub mod logging;
pub mod metrics;
pub mod node;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod proxy;
pub mod reload;
pub mod store;
pub mod tls;
