//! Housekeeping: the background thread that runs retention, compaction, timeouts and interval fsyncs.

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{Inner, Log, Topic};
use crate::config::FsyncPolicy;
use crate::error::Result;
use crate::partition::Partition;
use crate::record::now_ms;

/// The housekeeping thread's handle and its stop signal.
#[derive(Debug, Default)]
pub(super) struct Housekeeper {
    pub(super) stop: Mutex<bool>,
    pub(super) wake: Condvar,
    pub(super) handle: Mutex<Option<JoinHandle<()>>>,
}

impl Housekeeper {
    /// Stops the thread and waits for it, unless called from the thread itself (the last
    /// reference to the log may be dropped there).
    pub(super) fn stop(&self) {
        *self.stop.lock() = true;
        self.wake.notify_all();
        if let Some(h) = self.handle.lock().take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

impl Log {
    pub(super) fn start_housekeeper(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let handle = std::thread::Builder::new()
            .name("sluice-log-housekeeper".into())
            .spawn(move || housekeeping_loop(weak));
        match handle {
            Ok(h) => *self.inner.housekeeper.handle.lock() = Some(h),
            Err(e) => {
                tracing::error!(error = %e, "Could not start the log housekeeping thread; retention, compaction and timeouts will not run.")
            }
        }
    }

    /// Runs one round of retention, compaction, transaction and session timeouts now.
    pub fn run_housekeeping(&self) -> Result<()> {
        let now = now_ms();
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().values().cloned().collect();
        for t in &topics {
            let parts: Vec<Arc<Partition>> = t.partitions.read().clone();
            for p in parts {
                p.enforce_retention(now)?;
                p.compact(now)?;
                p.checkpoint()?;
            }
        }
        self.expire_transactions(now)?;
        self.retry_unfinished_ends()?;
        let gone = self.inner.groups.lock().expire(now as u64);
        for (group, member) in gone {
            tracing::info!(group = %group, member = %member, "Removed a group member whose session timed out.");
        }
        Ok(())
    }

    /// Fsyncs every partition with unsynced appends.
    pub fn sync_all(&self) -> Result<()> {
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().values().cloned().collect();
        for t in topics {
            for p in t.partitions.read().iter() {
                p.sync_if_dirty()?;
            }
        }
        Ok(())
    }
}

fn housekeeping_loop(weak: Weak<Inner>) {
    let mut last_full = Instant::now();
    let mut last_sync = Instant::now();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let tick = inner
            .options
            .housekeeping_interval
            .min(match inner.options.fsync {
                FsyncPolicy::Interval(d) => d,
                _ => Duration::from_secs(3600),
            });
        {
            let mut stop = inner.housekeeper.stop.lock();
            if *stop {
                return;
            }
            inner
                .housekeeper
                .wake
                .wait_for(&mut stop, tick.max(Duration::from_millis(5)));
            if *stop {
                return;
            }
        }
        let log = Log { inner };
        if let FsyncPolicy::Interval(d) = log.inner.options.fsync {
            if last_sync.elapsed() >= d {
                if let Err(e) = log.sync_all() {
                    tracing::error!(error = %e, "Periodic fsync failed.");
                }
                last_sync = Instant::now();
            }
        }
        if last_full.elapsed() >= log.inner.options.housekeeping_interval {
            if let Err(e) = log.run_housekeeping() {
                tracing::error!(error = %e, "Log housekeeping failed; will retry.");
            }
            last_full = Instant::now();
        }
        // Drop our strong reference before sleeping so the last user can close the log.
        drop(log);
    }
}
