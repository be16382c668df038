//! FANZ Edge load generator (issue "fanz-bench and the peer comparison").
//!
//! Not built yet. What will live here: the `fanz-bench` tool (HTTP/1.1, HTTP/2,
//! HTTP/3 and client-library drivers; open and closed loop with coordinated-omission
//! correction on hdrhistogram; uniform and Zipf key distributions; JSON and chart
//! output), `fanz-bench origin` (a fast scripted origin), and `bench/peers/` scripts
//! that run the same workload against nginx, Varnish, Redis and memcached.
//!
//! The node's in-process micro-benchmarks (criterion) live in `node/benches/`.
