//! FANZ Edge load generator.
//!
//! Components:
//! - [`driver`]: one request at a time over HTTP/1.1, HTTP/2 or HTTP/3, behind one enum.
//! - [`run`]: the closed loop (N connections, each sending its next request when the
//!   last one is answered), bounded in time, with hdrhistogram latencies.
//!
//! To come with the bench issue: open loop with coordinated-omission correction, key
//! distributions (Zipf), write mixes, a client-library driver, JSON and chart output,
//! `fanz-bench origin`, and the peer scripts in `bench/peers/`.

pub mod driver;
pub mod run;
