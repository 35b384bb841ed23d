//! Tiering: the background thread that uploads closed segments of tiered topics to the
//! remote storage, oldest first, one partition after another.
//!
//! A thread of its own, not a housekeeping step: an upload can take minutes, and fsyncs,
//! retention and transaction timeouts must not wait for it. A store that is down fails the
//! round; the next round tries again, and local retention waits meanwhile (it deletes only
//! uploaded segments).

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Inner, Log, Topic};
use crate::error::Result;
use crate::partition::Partition;

impl Log {
    pub(super) fn start_uploader(&self) {
        if self.inner.remote.is_none() {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let handle = std::thread::Builder::new()
            .name("sluice-log-uploader".into())
            .spawn(move || upload_loop(weak));
        match handle {
            Ok(h) => *self.inner.uploader.handle.lock() = Some(h),
            Err(e) => {
                tracing::error!(error = %e, "Could not start the tiered storage's upload thread; closed segments of tiered topics will stay local.")
            }
        }
    }

    /// Uploads every closed, stable segment of tiered topics not yet in remote storage, and
    /// deletes remote segments past retention; returns how many were uploaded. The upload
    /// thread calls it every `remote_upload_interval`.
    pub fn upload_segments(&self) -> Result<usize> {
        if self.inner.remote.is_none() {
            return Ok(0);
        }
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().values().cloned().collect();
        let mut uploaded = 0;
        let mut failed = None;
        for t in &topics {
            let enabled = t.config().remote_storage_enable;
            let parts: Vec<Arc<Partition>> = t.partitions.read().clone();
            for p in parts {
                if self.inner.uploader_stopping() {
                    break;
                }
                // One partition failing does not hold back the others.
                if let Err(e) = p.delete_expired_remote() {
                    failed.get_or_insert(e);
                }
                while enabled && !self.inner.uploader_stopping() {
                    match p.upload_next() {
                        Ok(true) => uploaded += 1,
                        Ok(false) => break,
                        Err(e) => {
                            failed.get_or_insert(e);
                            break;
                        }
                    }
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(uploaded),
        }
    }
}

impl Inner {
    fn uploader_stopping(&self) -> bool {
        *self.uploader.stop.lock()
    }
}

fn upload_loop(weak: Weak<Inner>) {
    let mut failing = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let tick = inner
            .options
            .remote_upload_interval
            .max(Duration::from_millis(5));
        {
            let mut stop = inner.uploader.stop.lock();
            if *stop {
                return;
            }
            inner.uploader.wake.wait_for(&mut stop, tick);
            if *stop {
                return;
            }
        }
        let log = Log { inner };
        match log.upload_segments() {
            Ok(_) if failing => {
                tracing::info!("Uploads to remote storage work again.");
                failing = false;
            }
            Ok(_) => {}
            Err(e) => {
                // Once per outage at WARN: local segments stay until their upload completes,
                // so nothing is lost; disks fill if it lasts.
                if !failing {
                    tracing::warn!(error = %e, "Uploading to remote storage failed; retrying every round. Local segments are kept until they are uploaded.");
                }
                failing = true;
            }
        }
        drop(log);
    }
}
