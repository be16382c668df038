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
//! Not yet here (issue 9): network namespaces per node, partitions and netem, a full
//! disk, randomised multi-fault runs.

pub mod checkers;
pub mod cluster;
pub mod history;
pub mod report;
pub mod scenario;
