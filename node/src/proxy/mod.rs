//! Pull-through HTTP caching in front of an origin (RFC 9111).
//!
//! - [`policy`]: what may be stored and for how long (pure).
//! - [`key`]: normalised cache keys, Vary variants and their marker entries.
//! - [`flight`]: request collapsing with streaming to every waiter.
//! - [`origin`]: which origin serves a Host; the client with bulkhead, breaker, retries.
//! - [`breaker`]: the per-origin circuit breaker.
//! - [`fill`]: the leader's fetch, what to store, the body pump, response tags.
//! - [`range`]: byte ranges answered from cached objects.
//! - [`respond`]: client responses from entries and from origin responses.
//! - [`handler`]: the request flow (see its phase diagram), with its phases in
//!   `upstream` (owner or origin), `revalidate` (a 304 merged into the stored
//!   response) and `unsafe_methods` (forwarding and invalidation, RFC 9111 §4.4).
pub mod breaker;
pub mod fill;
pub mod flight;
pub mod handler;
pub mod key;
pub mod origin;
pub mod policy;
pub mod respond;

pub use handler::{Proxy, PurgeTarget};
