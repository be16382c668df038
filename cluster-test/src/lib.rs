//! FANZ Edge cluster tests (issue "cluster-test: a fault-injection harness").
//!
//! Not built yet. What will live here: `fanz-cluster-test run SCENARIO`, which starts
//! real `fanz-node` processes (each in its own network namespace where available),
//! injects faults (SIGKILL and restart, SIGSTOP, partitions, netem latency and loss,
//! full disk, rolling restarts), records every client operation, and checks the
//! history: no read of data invalidated by an acknowledged purge, bounded error rates,
//! detection and convergence times. Single-node process tests live in `node/tests/`.
