//! FANZ Edge cluster tests: `fanz-cluster-test run SCENARIO` starts a real cluster of
//! `fanz-node` processes, runs a workload through `fanz-client` while it does one
//! fault to the cluster, records every operation, checks the history, and writes a
//! report (Markdown and JSON, with the seed that reproduces the run).
//!
//! - `cluster`: the processes, their ports and directories, and the faults done to
//!   them (SIGKILL and restart, SIGSTOP/SIGCONT, SIGTERM and restart).
//! - `history`: the record of operations and fault windows.
//! - `checkers`: what a history must obey (no read after an acknowledged purge, no
//!   stale or lost write) and error rates inside and outside fault windows.
//! - `scenario`: the workload and the scenarios.
//! - `report`: Markdown and JSON.
//!
//! - `netns`: one network namespace per node on a bridge, and the network faults
//!   (partitions, loss, latency) made in them.
//! - `faults`: the faults a scenario does and the figures each yields.
//! - `soak`: many random runs and the figures summed over them.

pub mod checkers;
pub mod cluster;
pub mod faults;
pub mod history;
pub mod netns;
pub mod report;
pub mod scenario;
pub mod soak;
