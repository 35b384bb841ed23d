//! Records in and out: appends, fetches, offsets lookups, append notifications and the clients.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Log;
use crate::batch::{BatchBuilder, BatchOptions};
use crate::consumer::{Consumer, ConsumerConfig, decode_fetch};
use crate::error::{LogError, Result};
use crate::partition::{AppendInfo, FetchResult, Isolation, OffsetSpec};
use crate::producer::{Producer, ProducerConfig};
use crate::record::Record;

impl Log {
    /// Appends a raw record batch (built with [`BatchBuilder`]) to a partition; an unknown
    /// topic is created first when [`LogOptions::auto_create_topics`](crate::LogOptions::auto_create_topics) is on.
    pub fn append(&self, topic: &str, partition: u32, batch: Vec<u8>) -> Result<AppendInfo> {
        self.check_open()?;
        self.topic_or_create(topic)?;
        let info = self.partition(topic, partition)?.append(batch)?;
        self.notify_appended();
        Ok(info)
    }

    /// Appends plain records (no producer id) in one batch; a convenience for tools and tests.
    pub fn append_records(
        &self,
        topic: &str,
        partition: u32,
        records: &[Record],
    ) -> Result<AppendInfo> {
        let mut b = BatchBuilder::new(BatchOptions::default());
        let err = |source| LogError::Batch {
            topic: topic.into(),
            partition,
            source,
        };
        for r in records {
            b.push(r).map_err(err)?;
        }
        let batch = b.build().map_err(err)?;
        self.append(topic, partition, batch)
    }

    /// Reads whole batches from `offset`.
    pub fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<FetchResult> {
        self.partition(topic, partition)?
            .fetch(offset, max_bytes, isolation)
    }

    /// Resolves earliest / latest / by-timestamp offsets.
    pub fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
        isolation: Isolation,
    ) -> Result<Option<i64>> {
        self.partition(topic, partition)?
            .list_offset(spec, isolation)
    }

    /// Reads every committed record of a topic partition, from its start to its last stable
    /// offset, calling `f` with each record and its offset: how the log, the SQL catalog and
    /// the worker load their compacted bookkeeping topics.
    pub fn read_all(
        &self,
        topic: &str,
        partition: u32,
        mut f: impl FnMut(i64, Record),
    ) -> Result<()> {
        let p = self.partition(topic, partition)?;
        let mut offset = p.info().log_start_offset;
        loop {
            let r = p.fetch(offset, 4 << 20, Isolation::ReadCommitted)?;
            if r.data.is_empty() {
                return Ok(());
            }
            let (records, next) =
                decode_fetch(&r, Isolation::ReadCommitted).map_err(|source| LogError::Batch {
                    topic: topic.into(),
                    partition,
                    source,
                })?;
            for rec in records {
                f(rec.offset, rec.record);
            }
            offset = next;
        }
    }

    pub(crate) fn notify_appended(&self) {
        let mut g = self.inner.appended.lock();
        *g = g.wrapping_add(1);
        self.inner.appended_cv.notify_all();
        self.inner.appended_watch.send_replace(*g);
    }

    /// The append counter as a watch: `changed().await` returns after the next append (or
    /// [`Log::wake_waiters`]); what async servers wait on instead of [`Log::wait_for_append`].
    pub fn watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.appended_watch.subscribe()
    }

    /// Wakes every [`Log::wait_for_append`] (and so every consumer's poll) now, as if
    /// something was appended: a stopping task's consumer returns at once.
    pub fn wake_waiters(&self) {
        self.notify_appended();
    }

    /// A counter that changes on every append; pass it to [`Log::wait_for_append`].
    pub fn append_generation(&self) -> u64 {
        *self.inner.appended.lock()
    }

    /// Waits until something was appended after `generation` was read, or `timeout`.
    pub fn wait_for_append(&self, generation: u64, timeout: Duration) {
        let mut g = self.inner.appended.lock();
        if *g == generation && !self.inner.closed.load(Ordering::Acquire) {
            self.inner.appended_cv.wait_for(&mut g, timeout);
        }
    }

    /// A producer (idempotent unless configured otherwise).
    pub fn producer(&self, config: ProducerConfig) -> Result<Producer> {
        Producer::new(self.clone(), config, None)
    }

    /// A transactional producer; fences any older instance with the same id.
    pub fn transactional_producer(
        &self,
        transactional_id: &str,
        config: ProducerConfig,
    ) -> Result<Producer> {
        Producer::new(self.clone(), config, Some(transactional_id.to_string()))
    }

    /// A consumer.
    pub fn consumer(&self, config: ConsumerConfig) -> Consumer {
        Consumer::new(self.clone(), config)
    }
}
