//! Pull-through HTTP caching in front of an origin (RFC 9111).
//!
//! - [`policy`]: what may be stored and for how long (pure).
pub mod policy;
