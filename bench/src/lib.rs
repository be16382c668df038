//! FANZ Edge load generator.
//!
//! Components:
//! - [`driver`]: one request at a time over HTTP/1.1, HTTP/2 or HTTP/3, behind one enum.
//! - [`workload`]: keys (uniform or Zipf), the read/write mix, a seedable generator.
//! - [`run`]: the closed loop and the open loop (coordinated-omission corrected),
//!   bounded in time, with hdrhistogram latencies; optional purges alongside.
//! - [`origin`]: `fanz-bench origin`, a fast origin serving objects of any size with
//!   `Cache-Control`, `ETag` and `Surrogate-Key`, so every target proxies the same.
//! - [`chart`]: an SVG chart of the latency percentiles of several runs.
//!
//! The peer scripts live in `bench/peers/`, the cluster scripts in `bench/scripts/`.

pub mod chart;
pub mod driver;
pub mod origin;
pub mod run;
pub mod workload;
