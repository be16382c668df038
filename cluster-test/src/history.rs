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
    /// A read through the client (routed to the key's owners); `got` is what it
    /// returned when it succeeded.
    Get { got: Option<String> },
    /// A read sent straight to one node's KV API, as CDN traffic reaches whichever
    /// edge is nearest (the node asks the owners itself). `marked` when the node
    /// flagged the answer as possibly stale (`Cache-Status: ...; detail=unsynced`).
    DirectGet {
        node: String,
        got: Option<String>,
        marked: bool,
    },
    /// A purge of the key (for a page: of its tag), acknowledged by every member
    /// (`wait=all`).
    Purge,
    /// A `POST` to a page sent straight to one node, whose success invalidates the
    /// page on every node (RFC 9111 §4.4); acknowledged when the node says every
    /// member applied it (`Fanz-Invalidation: complete`).
    DirectInvalidation { node: String },
    /// A page published at the origin: its new generation.
    Publish { generation: u64 },
    /// A page read straight from one node (pull-through from the origin): the
    /// generation it showed, and whether the node marked it unsynced.
    PageGet {
        node: String,
        generation: Option<u64>,
        marked: bool,
    },
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
    /// When the cluster was whole again (restarted, resumed, healed).
    pub end_ms: u64,
    /// From the fault until every other node (for a split, every node of the
    /// majority) saw the victim down.
    pub detection_ms: Option<u64>,
    /// From restart until the restarted node answered KV reads.
    pub recovery_ms: Option<u64>,
    /// From restart or heal until every node saw every member alive.
    pub converged_ms: Option<u64>,
    /// From the heal (or the fault's end) until a purge was again applied by every
    /// member.
    pub caught_up_ms: Option<u64>,
    /// For a pause: whether any node declared the paused node down.
    pub false_positive: Option<bool>,
    /// When converging took more than a few seconds: what the node that held it up
    /// last reported.
    pub slow_convergence: Option<String>,
}

impl FaultWindow {
    /// A window without figures yet.
    pub fn new(fault: String, start_ms: u64, end_ms: u64) -> Self {
        Self {
            fault,
            start_ms,
            end_ms,
            detection_ms: None,
            recovery_ms: None,
            converged_ms: None,
            caught_up_ms: None,
            false_positive: None,
            slow_convergence: None,
        }
    }
}

/// A whole run's history.
#[derive(Debug, Clone, Default, Serialize)]
pub struct History {
    /// Every operation, in no particular order.
    pub ops: Vec<Op>,
    /// Every fault.
    pub faults: Vec<FaultWindow>,
}
