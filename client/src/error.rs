//! The client's typed errors: what failed, and whether trying again can help.

use std::time::Duration;

/// Everything an operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No node could be reached (connection refused, reset, no route), after every
    /// owner and retry was tried.
    #[error("no node reachable: {0}")]
    Unreachable(String),
    /// The operation did not finish within its timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The admin token is missing or wrong (401/403). Retrying cannot help.
    #[error("not authorised: {0}")]
    Auth(String),
    /// A key, value, tag or list is over the limit the nodes enforce; refused before
    /// anything was sent.
    #[error("{what} is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// What was too large ("key", "value", "tag").
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Input the nodes would refuse (an empty key, a tag with spaces, ...).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A node refused or failed the request with this HTTP status.
    #[error("node {node} answered {status}: {message}")]
    Server {
        /// The node's address.
        node: String,
        /// HTTP status.
        status: u16,
        /// The node's reason.
        message: String,
    },
    /// A node answered something that is not a valid answer (cut off, malformed).
    #[error("node {node} sent a malformed answer: {message}")]
    Protocol {
        /// The node's address.
        node: String,
        /// What was wrong.
        message: String,
    },
    /// A purge or delete that waits for every member was made durable on `node` and
    /// is being retried to the rest, but `pending` had not applied it when the node's
    /// `purge_ack_timeout` passed: until they do, they may still serve what it
    /// covers. Not retried (the node retries the members itself); see `GET
    /// /purge/{purge_id}` for its progress.
    #[error("purge {} incomplete at {node}: not yet applied by {}", purge_id.as_deref().unwrap_or("?"), pending.join(", "))]
    PurgeIncomplete {
        /// The node that made the purge.
        node: String,
        /// The cluster-wide purge id.
        purge_id: Option<String>,
        /// Members that had not applied it.
        pending: Vec<String>,
    },
    /// The value producer of `get_or_set` failed.
    #[error("producer failed: {0}")]
    Producer(String),
    /// The client was configured wrongly (no seeds, a seed that is not a URL).
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether the same operation may succeed if tried again (on this node or
    /// another): connection failures, timeouts, malformed answers and 5xx are;
    /// auth, input and 4xx errors are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable(_) | Error::Timeout(_) | Error::Protocol { .. } => true,
            Error::Server { status, .. } => *status >= 500,
            Error::Auth(_)
            | Error::PurgeIncomplete { .. }
            | Error::TooLarge { .. }
            | Error::Invalid(_)
            | Error::Producer(_)
            | Error::Config(_) => false,
        }
    }
}

/// A result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
