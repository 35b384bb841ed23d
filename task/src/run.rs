//! Running a task: its thread, its retries and its epochs.
//!
//! ```text
//!  spawn ─► thread "source p/s" ─► supervise: attempt ─ok─► stopped
//!                                    │  └─ retryable error ─► backoff (stop wakes it) ─► attempt
//!                                    └─ fatal error ─► failed (status says why)
//!  attempt ─► run_epochs: step (wait ≤ rest of the epoch) ─► … ─► commit ─► step …
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::status::TaskStatus;
use crate::stop::{StopToken, Wait};

/// An error a task can fail with: the supervisor retries it or stops the task.
pub trait Failure: std::fmt::Display {
    /// True when another attempt may succeed (I/O, a server away, a transaction in the
    /// way); false when only an operator can help (a bad configuration, lost records).
    fn is_retryable(&self) -> bool;

    /// True when what the task works on is going away (the log closing under it): the task
    /// ends as stopped, not failed.
    fn is_shutdown(&self) -> bool {
        false
    }

    /// True when the attempt ended on purpose to start afresh from the last commit (say,
    /// the topic's schema changed): the next attempt starts at once, and the task is not
    /// reported as failing.
    fn is_restart(&self) -> bool {
        false
    }
}

/// Backoff between attempts: doubling from `initial` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first pause.
    pub initial: Duration,
    /// The longest pause.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

/// Turns error text into what may be shown (secrets removed).
pub type Redact = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// What to run: a task's identity and how it is supervised.
#[derive(Clone)]
pub struct TaskSpec {
    /// `source`, `sink` or `query`.
    pub kind: &'static str,
    /// The task's name: `<pipeline>/<source>`, `<pipeline>/<sink>` or the query id.
    pub name: String,
    /// The pipeline it belongs to, if any.
    pub pipeline: Option<String>,
    /// Its stop token (a child of its pipeline's, usually).
    pub stop: StopToken,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// Applied to error text before it is logged or shown.
    pub redact: Option<Redact>,
}

impl std::fmt::Debug for TaskSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSpec")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl TaskSpec {
    /// A task of `kind` named `name`, with the default retry policy.
    pub fn new(kind: &'static str, name: impl Into<String>, stop: StopToken) -> TaskSpec {
        TaskSpec {
            kind,
            name: name.into(),
            pipeline: None,
            stop,
            retry: RetryPolicy::default(),
            redact: None,
        }
    }

    /// `<kind> <name>`: how logs, status and dead letters name the task.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }
}

/// What a task's body sees: its stop token, its status and its tracing span.
#[derive(Debug)]
pub struct TaskContext {
    /// `<kind> <name>`.
    pub label: String,
    /// Stops the task; every wait of the task is woken by it.
    pub stop: StopToken,
    /// The task's counters and state.
    pub status: Arc<TaskStatus>,
    span: tracing::Span,
    epoch: AtomicU64,
}

impl TaskContext {
    /// A span for the epoch about to commit (fields: pipeline, task, epoch), inside the
    /// task's span.
    pub fn epoch_span(&self) -> tracing::Span {
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug_span!(parent: &self.span, "epoch", epoch)
    }
}

/// A running task: its status, and the means to stop it.
#[derive(Debug)]
pub struct TaskHandle {
    /// `<kind> <name>`.
    pub label: String,
    /// Its counters and state.
    pub status: Arc<TaskStatus>,
    stop: StopToken,
    thread: Option<JoinHandle<()>>,
}

impl TaskHandle {
    /// Asks the task to stop (it commits what it has); does not wait.
    pub fn signal_stop(&self) {
        self.stop.stop();
    }

    /// Stops the task and waits for its thread to end.
    pub fn stop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `attempt` on a thread of its own, named after the task, under [`supervise`].
pub fn spawn<E, F>(spec: TaskSpec, attempt: F) -> std::io::Result<TaskHandle>
where
    E: Failure,
    F: FnMut(&TaskContext) -> Result<(), E> + Send + 'static,
{
    let label = spec.label();
    let status = Arc::new(TaskStatus::default());
    let ctx = TaskContext {
        label: label.clone(),
        stop: spec.stop.clone(),
        status: Arc::clone(&status),
        span: tracing::info_span!("task", pipeline = spec.pipeline.as_deref().unwrap_or(""), task = %label),
        epoch: AtomicU64::new(0),
    };
    let thread = std::thread::Builder::new()
        .name(label.clone())
        .spawn(move || {
            let _entered = ctx.span.clone().entered();
            supervise(&ctx, spec.retry, spec.redact.as_ref(), attempt);
            ctx.status.stopped.store(true, Ordering::SeqCst);
        })?;
    Ok(TaskHandle {
        label,
        status,
        stop: spec.stop,
        thread: Some(thread),
    })
}

/// Runs `attempt` until it returns Ok or the task stops; after a retryable error it waits
/// (woken at once by a stop) and tries again, with doubling pauses; after a fatal one the
/// task stops as `failed`, its error in its status: retrying cannot help, so it does not
/// spin.
pub fn supervise<E: Failure>(
    ctx: &TaskContext,
    policy: RetryPolicy,
    redact: Option<&Redact>,
    mut attempt: impl FnMut(&TaskContext) -> Result<(), E>,
) {
    let shown = |e: &E| match redact {
        Some(r) => r(&e.to_string()),
        None => e.to_string(),
    };
    let mut backoff = policy.initial;
    while !ctx.stop.is_stopped() {
        match attempt(ctx) {
            Ok(()) => return,
            Err(e) if e.is_shutdown() => {
                tracing::info!(task = %ctx.label, reason = %shown(&e), "Task stops: what it works on is closing.");
                return;
            }
            Err(e) if e.is_restart() => {
                tracing::info!(task = %ctx.label, reason = %shown(&e), "Task restarts from its last commit.");
            }
            Err(e) if !e.is_retryable() => {
                let e = shown(&e);
                tracing::error!(task = %ctx.label, error = %e, "Task failed and stops: retrying cannot help. Fix the cause, then restart it.");
                *ctx.status.error.lock() = Some(e);
                ctx.status.failed.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                let e = shown(&e);
                tracing::error!(task = %ctx.label, error = %e, retry_in_ms = backoff.as_millis() as u64, "Task failed; it restarts from its last commit.");
                *ctx.status.error.lock() = Some(e);
                ctx.status.restarts.fetch_add(1, Ordering::Relaxed);
                ctx.stop.sleep(backoff);
                backoff = (backoff * 2).min(policy.max);
            }
        }
    }
}

/// A task's work in epochs: input is taken in steps into an open epoch, and the epoch
/// commits (outputs, dead letters, positions and state in one transaction, or in order for
/// at-least-once) every commit interval, when someone waits for it, and on stop.
pub trait Epochs {
    /// The error of a step or commit.
    type Error: Failure;

    /// One unit of work: take what input there is, waiting at most as `wait` allows (a
    /// stop ends the wait at once), and add it to the open epoch.
    fn step(&mut self, wait: &Wait) -> Result<(), Self::Error>;

    /// When the open epoch started; `None` when nothing waits to be committed.
    fn open_since(&self) -> Option<Instant>;

    /// Someone waits for this epoch (an HTTP client for its answer): commit now.
    fn urgent(&self) -> bool {
        false
    }

    /// Commits the open epoch.
    fn commit(&mut self) -> Result<(), Self::Error>;
}

/// The longest a step waits for input when no epoch is open.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// Runs `body` in epochs of `interval` until the task stops; the open epoch commits before
/// it returns. This is the one loop of every source, sink and query.
pub fn run_epochs<B: Epochs>(
    ctx: &TaskContext,
    interval: Duration,
    body: &mut B,
) -> Result<(), B::Error> {
    loop {
        let stopping = ctx.stop.is_stopped();
        if !stopping {
            let wait = body.open_since().map_or(IDLE_WAIT, |since| {
                interval
                    .saturating_sub(since.elapsed())
                    .max(Duration::from_millis(1))
            });
            body.step(&Wait::until(Instant::now() + wait, &ctx.stop))?;
        }
        let due = body
            .open_since()
            .is_some_and(|since| stopping || body.urgent() || since.elapsed() >= interval);
        if due {
            let _epoch = ctx.epoch_span().entered();
            body.commit()?;
        }
        if stopping {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[derive(Debug)]
    struct E(bool);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{}",
                if self.0 {
                    "away"
                } else {
                    "bad config secret-1"
                }
            )
        }
    }
    impl Failure for E {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }

    fn fast(kind: &'static str) -> TaskSpec {
        let mut spec = TaskSpec::new(kind, "p/t", StopToken::new());
        spec.retry = RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
        };
        spec
    }

    fn wait_until(what: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !what() {
            assert!(Instant::now() < until, "timed out");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn retryable_errors_are_retried_and_fatal_ones_stop_the_task_as_failed() {
        let attempts = Arc::new(AtomicU32::new(0));
        let n = Arc::clone(&attempts);
        let mut spec = fast("source");
        spec.redact = Some(Arc::new(|e: &str| e.replace("secret-1", "***")));
        let task = spawn(spec, move |_| {
            let k = n.fetch_add(1, Ordering::SeqCst);
            Err(E(k < 3))
        })
        .unwrap();
        wait_until(|| task.status.stopped.load(Ordering::SeqCst));
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            4,
            "3 retries, then the fatal error"
        );
        assert_eq!(task.status.task_state(), crate::TaskState::Failed);
        assert_eq!(task.status.restarts.load(Ordering::SeqCst), 3);
        assert_eq!(task.status.error().as_deref(), Some("bad config ***"));
    }

    #[test]
    fn a_stop_ends_the_backoff_at_once() {
        let mut spec = fast("sink");
        spec.retry = RetryPolicy {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(60),
        };
        let mut task = spawn(spec, |_| Err(E(true))).unwrap();
        wait_until(|| task.status.restarts.load(Ordering::SeqCst) == 1);
        let started = Instant::now();
        task.stop();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(task.status.task_state(), crate::TaskState::Stopped);
    }

    /// Counts steps and commits; an epoch opens at the first step.
    struct Counter {
        since: Option<Instant>,
        steps: Arc<AtomicU32>,
        commits: Arc<AtomicU32>,
    }
    impl Epochs for Counter {
        type Error = E;
        fn step(&mut self, wait: &Wait) -> Result<(), E> {
            self.steps.fetch_add(1, Ordering::SeqCst);
            self.since.get_or_insert_with(Instant::now);
            wait.sleep(wait.remaining());
            Ok(())
        }
        fn open_since(&self) -> Option<Instant> {
            self.since
        }
        fn commit(&mut self) -> Result<(), E> {
            self.since = None;
            self.commits.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn epochs_commit_every_interval_and_once_more_on_stop() {
        let steps = Arc::new(AtomicU32::new(0));
        let commits = Arc::new(AtomicU32::new(0));
        let (s, c) = (Arc::clone(&steps), Arc::clone(&commits));
        let mut task = spawn(fast("query"), move |ctx| {
            let mut body = Counter {
                since: None,
                steps: Arc::clone(&s),
                commits: Arc::clone(&c),
            };
            run_epochs(ctx, Duration::from_millis(20), &mut body)
        })
        .unwrap();
        wait_until(|| commits.load(Ordering::SeqCst) >= 3);
        let started = Instant::now();
        task.stop();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the stop woke the step"
        );
        let (steps, commits) = (steps.load(Ordering::SeqCst), commits.load(Ordering::SeqCst));
        assert!(
            commits >= 4 && steps >= commits,
            "{steps} steps, {commits} commits"
        );
    }
}
