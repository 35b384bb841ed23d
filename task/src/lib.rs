//! The task runtime shared by every source, sink and persistent query: what a task is
//! besides its own poll, process, write and commit logic.
//!
//! ```text
//!  TaskSpec ─► spawn ─► thread ─► supervise (retry policy: retryable → backoff, fatal → failed)
//!                                   └► run_epochs(Epochs: step … commit) ─► TaskStatus
//!  StopToken ─ stop() ─► wakes every Wait, sleep and registered waker of the task at once
//! ```
//!
//! A task supplies an [`Epochs`] implementation (a step that takes input into the open
//! epoch, a commit) and an error type that says whether it is [`Failure::is_retryable`];
//! the runtime gives it the thread, the stop token, the retries with backoff, the epoch
//! cadence, the `tracing` spans (`task` with pipeline and task, `epoch` inside it), the
//! status type read by the API and metrics, and the dead-letter rule.
//!
//! # Layout
//!
//! - [`stop`]: [`StopToken`] (one per task, children per pipeline) and [`Wait`] (a deadline
//!   a stop ends early).
//! - [`run`]: [`spawn`], [`supervise`] (the retry policy), [`run_epochs`] (the epoch loop).
//! - [`status`]: [`TaskStatus`], the counters and state of every task.
//! - [`dead_letter`]: the dead-letter topic name and headers, [`DeadLetter`].
//! - [`guarantee`]: [`Guarantee`] (exactly-once or at-least-once) and its producer.
//! - [`kept`]: the committed latest value of a key in a one-partition topic (a pipeline's
//!   positions in a cluster).

pub mod dead_letter;
pub mod guarantee;
pub mod kept;
pub mod run;
pub mod status;
pub mod stop;

pub use dead_letter::{DeadLetter, dlq_topic, send_or_dead_letter};
pub use guarantee::Guarantee;
pub use run::{
    Epochs, Failure, RetryPolicy, TaskContext, TaskHandle, TaskSpec, run_epochs, spawn, supervise,
};
pub use status::{LATENCY_BUCKETS, LatencyHistogram, TaskState, TaskStatus};
pub use stop::{StopToken, Wait};
