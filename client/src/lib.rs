//! FANZ Edge client library (issue "fanz-client library and fanzctl").
//!
//! Not built yet. What will live here, on top of `fanz-protocol`:
//! - a cluster-aware async client (builder with seeds, TLS, token, timeouts, retry
//!   policy) that learns the ring from any node and sends each operation to an owner
//!   over the peer protocol: `get`, `get_with_meta`, `set` (TTL, tags, dependencies,
//!   stale-while-revalidate), `delete`, `purge`, `get_many`/`set_many`, `get_or_set`;
//! - typed errors saying what failed and whether a retry can help;
//! - an optional near cache kept coherent by pushed invalidations;
//! - the `fanzctl` binary for operators (purge, members, ring, stats, get/put/del).
//!
//! Until then, applications use the node's KV HTTP API (`/kv/{key}`, see the README).
