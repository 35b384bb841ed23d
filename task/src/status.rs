//! What a task has done and how it is: one type behind `/pipelines`, `SHOW QUERIES` and
//! `/metrics` for sources, sinks and queries alike.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// A task's counters and state, shared between its thread and whoever reports on it.
/// Counters are updated once per poll or epoch, never per record.
#[derive(Debug, Default)]
pub struct TaskStatus {
    /// Records read (sources: from outside; sinks and queries: from their topic).
    pub records_in: AtomicU64,
    /// Records written (sources and queries: to their topic; sinks: outside).
    pub records_out: AtomicU64,
    /// Bytes read (record keys and values).
    pub bytes_in: AtomicU64,
    /// Bytes written.
    pub bytes_out: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub rejected: AtomicU64,
    /// Records left out by design, not errors: a stream record whose inner-join key is NULL.
    pub dropped: AtomicU64,
    /// Epochs committed.
    pub commits: AtomicU64,
    /// Time spent committing, in microseconds.
    pub commit_micros: AtomicU64,
    /// When the last epoch committed, in ms since the epoch (0: none yet).
    pub last_commit_ms: AtomicU64,
    /// How long commits took.
    pub commit_latency: LatencyHistogram,
    /// From a record's timestamp to its output being durable (sinks: observed once per
    /// commit, for the oldest record the commit made durable).
    pub record_latency: LatencyHistogram,
    /// Restarts after failures.
    pub restarts: AtomicU64,
    /// The last error, while it is being retried, or the one the task stopped with.
    pub error: Mutex<Option<String>>,
    /// Stopped by an error retrying cannot fix (a bad configuration, lost records).
    pub failed: AtomicBool,
    /// Set once the task's thread has ended (stopped, paused or failed).
    pub stopped: AtomicBool,
    /// How far behind its input a source is, in bytes, when it can tell (a Postgres CDC
    /// source: the WAL its replication slot holds back).
    pub source_lag_bytes: Mutex<Option<u64>>,
}

/// Upper bounds of the latency buckets, in seconds (1 ms to 5 min).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Durations counted in [`LATENCY_BUCKETS`], in atomics: observed once per commit or batch
/// (never per record), read by `/metrics` as a Prometheus histogram.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last one is above every bound.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    /// Counts one duration.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let at = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The sum in seconds, the count, and each bucket's own count by its upper bound (the
    /// last `+Inf`); an encoder makes them cumulative.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
                    c.load(Ordering::Relaxed),
                )
            })
            .collect();
        (
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            buckets.iter().map(|b| b.1).sum(),
            buckets,
        )
    }
}

/// The states a task reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Working.
    Running,
    /// An attempt failed; the task restarts with backoff (`error` says why).
    Retrying,
    /// Stopped by an error retrying cannot fix; an operator acts (`error` says why).
    Failed,
    /// Stopped on request.
    Stopped,
}

impl TaskState {
    /// `running`, `retrying`, `failed` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Retrying => "retrying",
            TaskState::Failed => "failed",
            TaskState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TaskStatus {
    /// The task's state.
    pub fn task_state(&self) -> TaskState {
        if self.failed.load(Ordering::Relaxed) {
            TaskState::Failed
        } else if self.stopped.load(Ordering::Relaxed) {
            TaskState::Stopped
        } else if self.error.lock().is_some() {
            TaskState::Retrying
        } else {
            TaskState::Running
        }
    }

    /// The state's name (see [`TaskState::as_str`]).
    pub fn state(&self) -> &'static str {
        self.task_state().as_str()
    }

    /// Counts an epoch committed, which started committing at `started`.
    pub fn committed(&self, started: Instant) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        let took = started.elapsed();
        self.commit_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.commit_latency.observe(took);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_commit_ms.store(now, Ordering::Relaxed);
    }

    /// Counts records and bytes moved through the task.
    pub fn moved(&self, records_in: u64, records_out: u64, bytes_in: u64, bytes_out: u64) {
        self.records_in.fetch_add(records_in, Ordering::Relaxed);
        self.records_out.fetch_add(records_out, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }

    /// The last error, if any.
    pub fn error(&self) -> Option<String> {
        self.error.lock().clone()
    }
}
