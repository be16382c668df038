//! The FANZ Edge client library.
//!
//! A cluster-aware async client: it learns the members and the ring from any node's
//! admin API, keeps that view fresh, and sends each operation straight to an owner
//! of the key, failing over to the other owners and then to any member. Idempotent
//! operations are retried with exponential backoff and full jitter; each node has a
//! circuit breaker; errors say what failed and whether a retry can help
//! ([`Error::is_retryable`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), fanz_client::Error> {
//! use fanz_client::{Client, Purge, SetOptions};
//! use std::time::Duration;
//!
//! let client = Client::builder()
//!     .seeds(["http://10.0.0.1:9091", "http://10.0.0.2:9091"])
//!     .token("admin-token")
//!     .build()
//!     .await?;
//! client.set("user:42", "Ada", &SetOptions::ttl(Duration::from_secs(300)).tag("users")).await?;
//! assert_eq!(client.get("user:42").await?.as_deref(), Some(&b"Ada"[..]));
//! client.purge(&Purge::tag("users")).await?; // acknowledged by every member
//! assert_eq!(client.get("user:42").await?, None);
//! # Ok(()) }
//! ```
//!
//! Transport: HTTP/1.1 over pooled keep-alive connections to the nodes' KV API,
//! not the QUIC peer protocol: on these machines QUIC costs about twice what
//! HTTP/1.1 does per small request (docs/PERFORMANCE.md, issue 5), and the peer
//! protocol's mutual TLS is the cluster's own trust boundary, which application
//! servers should not hold the keys to.

#![warn(missing_docs)]

mod breaker;
mod client;
mod error;
mod near;
mod options;
mod pool;
mod topology;

pub use client::{Client, ClientBuilder};
pub use error::{Error, Result};
pub use options::{Dependency, Purge, PurgeReport, RetryPolicy, SetOptions, Value};
pub use topology::{ClusterReport, Member, Topology};
