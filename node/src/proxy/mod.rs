//! Pull-through HTTP caching in front of an origin (RFC 9111).
//!
//! - [`policy`]: what may be stored and for how long (pure).
//! - [`origin`]: which origin serves a Host; the client with bulkhead, breaker, retries.
//! - [`breaker`]: the per-origin circuit breaker.
pub mod breaker;
pub mod origin;
pub mod policy;
