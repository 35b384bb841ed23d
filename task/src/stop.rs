//! The stop token: one signal per task that wakes every wait at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A task's stop signal. Clones share it; [`StopToken::stop`] wakes at once every
/// [`StopToken::sleep`], every [`Wait`] and every wake-up registered with
/// [`StopToken::on_stop`] (a consumer's poll, a queue's receive), so a stopping task never
/// sits out the rest of a timeout. A [`StopToken::child`] stops with its parent (a
/// pipeline's tasks with the pipeline) and also on its own.
///
/// Blocking, not async: tasks run on their own threads because the log's API blocks
/// (std-style `parking_lot` primitives, no runtime needed to wait).
#[derive(Clone, Default)]
pub struct StopToken {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    stopped: Mutex<bool>,
    cv: Condvar,
    /// Called once, on stop. Children register here too.
    wakers: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for StopToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopToken")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl StopToken {
    /// A token not stopped yet.
    pub fn new() -> StopToken {
        StopToken::default()
    }

    /// A token that stops when this one does (and can be stopped alone).
    pub fn child(&self) -> StopToken {
        let child = StopToken::new();
        let weak = Arc::downgrade(&child.inner);
        self.on_stop(move || {
            if let Some(inner) = weak.upgrade() {
                StopToken { inner }.stop();
            }
        });
        child
    }

    /// Stops: every wait on this token and its children returns now.
    pub fn stop(&self) {
        {
            let mut stopped = self.inner.stopped.lock();
            if *stopped {
                return;
            }
            *stopped = true;
            self.inner.cv.notify_all();
        }
        let wakers = std::mem::take(&mut *self.inner.wakers.lock());
        for wake in wakers {
            wake();
        }
    }

    /// Whether [`StopToken::stop`] was called (on this token or a parent).
    pub fn is_stopped(&self) -> bool {
        *self.inner.stopped.lock()
    }

    /// Calls `wake` when the token stops (at once when it has stopped already): for waits
    /// the token cannot reach itself, such as a consumer's poll on the log.
    pub fn on_stop(&self, wake: impl Fn() + Send + Sync + 'static) {
        let stopped = self.inner.stopped.lock();
        if *stopped {
            drop(stopped);
            wake();
        } else {
            self.inner.wakers.lock().push(Box::new(wake));
        }
    }

    /// Sleeps for `d`, or until the token stops; true when it stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        let mut stopped = self.inner.stopped.lock();
        while !*stopped {
            if self.inner.cv.wait_until(&mut stopped, until).timed_out() {
                break;
            }
        }
        *stopped
    }
}

/// How long a call may wait: until a deadline, or until its task stops, whichever is first.
/// Given to polls (a source's `poll`) so that a source waiting for input wakes the
/// moment its task stops.
#[derive(Debug, Clone)]
pub struct Wait {
    deadline: Instant,
    stop: StopToken,
}

impl Wait {
    /// Until `deadline` or `stop`.
    pub fn until(deadline: Instant, stop: &StopToken) -> Wait {
        Wait {
            deadline,
            stop: stop.clone(),
        }
    }

    /// For `d` from now, with a token no one stops (tests, one-off calls).
    pub fn timeout(d: Duration) -> Wait {
        Wait {
            deadline: Instant::now() + d,
            stop: StopToken::new(),
        }
    }

    /// Time left (zero once the deadline passed or the task stopped).
    pub fn remaining(&self) -> Duration {
        if self.stop.is_stopped() {
            return Duration::ZERO;
        }
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The deadline passed or the task stopped.
    pub fn is_over(&self) -> bool {
        self.remaining().is_zero()
    }

    /// Sleeps up to `d`, never past the deadline; false when the wait is over (deadline or
    /// stop), so `while wait.sleep(step) { ... }` loops end on time.
    pub fn sleep(&self, d: Duration) -> bool {
        let d = d.min(self.remaining());
        if d.is_zero() {
            return false;
        }
        !self.stop.sleep(d) && !self.is_over()
    }

    /// The task's stop token.
    pub fn stop_token(&self) -> &StopToken {
        &self.stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_wakes_a_sleeper_at_once() {
        let token = StopToken::new();
        let t = token.clone();
        let started = Instant::now();
        let h = std::thread::spawn(move || t.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        token.stop();
        assert!(h.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_child_stops_with_its_parent_and_alone() {
        let parent = StopToken::new();
        let a = parent.child();
        let b = parent.child();
        a.stop();
        assert!(a.is_stopped() && !b.is_stopped() && !parent.is_stopped());
        parent.stop();
        assert!(b.is_stopped());
        assert!(
            parent.child().is_stopped(),
            "a child of a stopped token is stopped"
        );
    }

    #[test]
    fn wakers_run_once_and_at_once_when_already_stopped() {
        let token = StopToken::new();
        let n = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let m = Arc::clone(&n);
        token.on_stop(move || {
            m.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        token.stop();
        token.stop();
        let m = Arc::clone(&n);
        token.on_stop(move || {
            m.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn a_wait_ends_at_its_deadline_or_stop() {
        let w = Wait::timeout(Duration::from_millis(30));
        let started = Instant::now();
        while w.sleep(Duration::from_millis(5)) {}
        assert!(started.elapsed() >= Duration::from_millis(30));
        let token = StopToken::new();
        let w = Wait::until(Instant::now() + Duration::from_secs(30), &token);
        token.stop();
        assert!(!w.sleep(Duration::from_secs(30)));
        assert_eq!(w.remaining(), Duration::ZERO);
    }
}
