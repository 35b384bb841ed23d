//! The worker's connector tasks on the shared task runtime (`sluice-task`): a source task
//! writes what its connector polls, a sink task feeds its connector committed records; each
//! supplies its step and commit, and `sluice_task::run_epochs` runs them.
//!
//! ```text
//!  source task: poll… ─► txn{ records, dead letters, position, keyed state } ─► commit
//!  sink task:   poll (read_committed) ─► write… ─► flush ─► txn{ dead letters, offsets }
//! ```
//!
//! # Layout
//!
//! - [`positions`]: the committed source positions and keyed state
//!   (`__sluice_source_positions`).
//! - [`source`]: the source task.
//! - [`sink`]: the sink task.

pub mod positions;
pub mod sink;
pub mod source;

use bytes::Bytes;
use sluice_log::LogError;
use sluice_task::DeadLetter;

/// Why a connector task's attempt failed, and whether another attempt can help.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// From the connector: its own `is_retryable` decides (I/O, HTTP and object-store
    /// failures are retried; a bad configuration or stored position is not).
    #[error(transparent)]
    Connector(#[from] sluice_connectors::ConnectorError),
    /// From the log: retried unless the request itself was wrong (a deleted topic, a record
    /// over `max.message.bytes`), or the log is closing.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Retrying later may help (another task's transaction holds the positions back).
    #[error("{0}")]
    Retryable(String),
    /// Retrying cannot help: the task stops and says why; an operator acts.
    #[error("{0}")]
    Fatal(String),
    /// The attempt ends on purpose and the next starts at once from the last commit.
    #[error("{0}")]
    Restart(String),
}

impl sluice_task::Failure for TaskError {
    fn is_retryable(&self) -> bool {
        match self {
            TaskError::Connector(e) => e.is_retryable(),
            TaskError::Log(e) => !e.is_user_error() && !matches!(e, LogError::Closed),
            TaskError::Retryable(_) | TaskError::Restart(_) => true,
            TaskError::Fatal(_) => false,
        }
    }

    fn is_shutdown(&self) -> bool {
        matches!(self, TaskError::Log(LogError::Closed))
    }

    fn is_restart(&self) -> bool {
        matches!(self, TaskError::Restart(_))
    }
}

/// The dead letter of input a connector could not use.
fn dead_letter(r: sluice_connectors::Rejected) -> DeadLetter {
    DeadLetter {
        reason: r.reason,
        origin: r.origin,
        key: None,
        value: Some(Bytes::from(r.raw)),
        timestamp: None,
    }
}

/// Bytes of a record's key and value.
fn record_bytes(key: Option<&Bytes>, value: Option<&Bytes>) -> u64 {
    (key.map_or(0, |k| k.len()) + value.map_or(0, |v| v.len())) as u64
}
