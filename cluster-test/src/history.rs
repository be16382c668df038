//! The recorded history of a run: every client operation with its start and end
//! (milliseconds since the run began), the key, what it wrote or read, and how it
//! ended; plus the fault windows. Checkers read only this.

use serde::Serialize;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// A write of `value`.
    Set { value: String },
    /// A read; `got` is what it returned when it succeeded.
    Get { got: Option<String> },
    /// A purge of the key, acknowledged by every member (`wait=all`).
    Purge,
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Op {
    /// Which worker ran it.
    pub worker: usize,
    /// The key.
    pub key: String,
    /// What it did.
    pub kind: OpKind,
    /// When it was sent, ms since the run began.
    pub start_ms: u64,
    /// When it ended.
    pub end_ms: u64,
    /// Whether it succeeded (for a read: answered, found or not).
    pub ok: bool,
    /// The error, when it failed.
    pub error: Option<String>,
}

/// A fault and when it was in effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultWindow {
    /// What was done ("SIGKILL n2, restart", "SIGSTOP n1 1 s", ...).
    pub fault: String,
    /// When it began, ms since the run began.
    pub start_ms: u64,
    /// When the cluster was whole again (restarted, resumed).
    pub end_ms: u64,
}

/// A whole run's history.
#[derive(Debug, Clone, Default, Serialize)]
pub struct History {
    /// Every operation, in no particular order.
    pub ops: Vec<Op>,
    /// Every fault.
    pub faults: Vec<FaultWindow>,
}
