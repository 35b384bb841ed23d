//! The source task: what its connector polls goes to the topic, and the position after it
//! (with the source's keyed state) to `__sluice_source_positions`, in one log transaction
//! per epoch. With `guarantee = "at-least-once"` there is no transaction: the records are
//! flushed, then the position is written, so a crash in between repeats them.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use sluice_connectors::Source;
use sluice_log::{Log, Producer, Record};
use sluice_task::{Epochs, Guarantee, TaskContext, Wait, send_or_dead_letter};

use super::positions::{POSITIONS_TOPIC, SharedPositions, state_key, wait_stable};
use super::{TaskError, dead_letter, record_bytes};

/// Records a poll may return.
const MAX_POLL: usize = 10_000;

/// A source task's settings.
#[derive(Debug)]
pub struct SourceTask {
    /// The log.
    pub log: Log,
    /// `<pipeline>/<source>`: the position key and the transactional id's suffix.
    pub key: String,
    /// The topic it writes.
    pub topic: String,
    /// Its dead-letter topic.
    pub dlq: String,
    /// The worker's committed positions.
    pub positions: SharedPositions,
    /// Exactly-once or at-least-once.
    pub guarantee: Guarantee,
    /// How often an epoch commits.
    pub commit_interval: std::time::Duration,
}

/// The records, dead letters and position of a source's open epoch.
struct SourceEpoch {
    started: Instant,
    position: Vec<u8>,
    /// Keyed state changes, in order.
    state: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    records: u64,
    bytes: u64,
    rejected: u64,
}

impl SourceTask {
    /// One attempt: resume `source` from its committed position and run epochs until the
    /// task stops.
    pub fn attempt(&self, ctx: &TaskContext, source: &mut dyn Source) -> Result<(), TaskError> {
        // The producer first: a transactional one aborts what an earlier instance of this
        // task left open, before the position is read.
        let producer = self
            .guarantee
            .producer(&self.log, &format!("sluice-source-{}", self.key))?;
        wait_stable(&self.log, &ctx.stop)?;
        let (position, state) = {
            let mut positions = self.positions.lock();
            positions.catch_up(&self.log)?;
            positions.get(&self.key)
        };
        source.restore(state)?;
        source.open(position.as_deref())?;
        *ctx.status.error.lock() = None;
        let mut run = SourceRun {
            task: self,
            ctx,
            source,
            producer,
            epoch: None,
        };
        sluice_task::run_epochs(ctx, self.commit_interval, &mut run)
    }
}

struct SourceRun<'a> {
    task: &'a SourceTask,
    ctx: &'a TaskContext,
    source: &'a mut dyn Source,
    producer: Producer,
    epoch: Option<SourceEpoch>,
}

impl Epochs for SourceRun<'_> {
    type Error = TaskError;

    fn step(&mut self, wait: &Wait) -> Result<(), TaskError> {
        let batch = self.source.poll(MAX_POLL, wait)?;
        if let Some(lag) = self.source.lag_bytes() {
            *self.ctx.status.source_lag_bytes.lock() = Some(lag);
        }
        let Some(position) = batch.position else {
            return Ok(());
        };
        if self.epoch.is_none() && self.task.guarantee == Guarantee::ExactlyOnce {
            self.producer.begin_transaction()?;
        }
        let e = self.epoch.get_or_insert_with(|| SourceEpoch {
            started: Instant::now(),
            position: Vec::new(),
            state: Vec::new(),
            records: 0,
            bytes: 0,
            rejected: 0,
        });
        e.position = position;
        e.state.extend(batch.state);
        e.records += batch.records.len() as u64;
        e.rejected += batch.rejected.len() as u64;
        for r in batch.records {
            let bytes = record_bytes(r.key.as_ref(), r.value.as_ref());
            let (task, label) = (self.task, &self.ctx.label);
            if send_or_dead_letter(&mut self.producer, &task.topic, r, &task.dlq, label)? {
                e.bytes += bytes;
            } else {
                e.records -= 1;
                e.rejected += 1;
            }
        }
        for (topic, schema) in &batch.schemas {
            let registry = self.task.log.schemas();
            let subject = sluice_log::schema::value_subject(topic);
            if self.task.log.topic(topic).is_err() {
                match self.task.log.create_topic(topic, 1, &[]) {
                    Ok(()) | Err(sluice_log::LogError::TopicExists(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                registry.set_compatibility(
                    Some(&subject),
                    sluice_log::schema::CompatibilityLevel::None,
                )?;
            }
            registry.register(&subject, schema)?;
        }
        for (topic, r) in batch.routed {
            if self.task.log.topic(&topic).is_err() {
                // A table seen for the first time: its topic is made like the source's
                // (one partition, the broker's defaults).
                match self.task.log.create_topic(&topic, 1, &[]) {
                    Ok(()) | Err(sluice_log::LogError::TopicExists(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            e.records += 1;
            let bytes = record_bytes(r.key.as_ref(), r.value.as_ref());
            let (task, label) = (self.task, &self.ctx.label);
            if send_or_dead_letter(&mut self.producer, &topic, r, &task.dlq, label)? {
                e.bytes += bytes;
            } else {
                e.records -= 1;
                e.rejected += 1;
            }
        }
        for r in batch.rejected {
            self.producer
                .send(&self.task.dlq, dead_letter(r).into_record(&self.ctx.label))?;
        }
        Ok(())
    }

    fn open_since(&self) -> Option<Instant> {
        self.epoch.as_ref().map(|e| e.started)
    }

    fn urgent(&self) -> bool {
        self.source.waiting()
    }

    /// Ends an epoch: the position joins the records in one transaction; at least once,
    /// the records are flushed first and the position written after them.
    fn commit(&mut self) -> Result<(), TaskError> {
        let Some(e) = self.epoch.take() else {
            return Ok(());
        };
        let task = self.task;
        let started = Instant::now();
        let now = sluice_log::record::now_ms();
        let mut records: Vec<Record> = e
            .state
            .into_iter()
            .map(|(k, v)| Record {
                key: Some(Bytes::from(state_key(&task.key, &k))),
                value: v.map(Bytes::from),
                headers: Vec::new(),
                timestamp: now,
            })
            .collect();
        records.push(Record {
            key: Some(Bytes::from(task.key.clone())),
            value: Some(Bytes::from(e.position)),
            headers: Vec::new(),
            timestamp: now,
        });
        if task.guarantee == Guarantee::ExactlyOnce {
            for r in records {
                self.producer.send(POSITIONS_TOPIC, r)?;
            }
            sluice_log::fault::point("source-before-commit");
            self.producer.commit_transaction()?;
        } else {
            self.producer.flush()?;
            sluice_log::fault::point("source-before-commit");
            for r in records {
                self.producer.send(POSITIONS_TOPIC, r)?;
            }
            self.producer.flush()?;
        }
        self.source.committed();
        let status = &self.ctx.status;
        status.committed(started);
        status.moved(e.records + e.rejected, e.records, e.bytes, e.bytes);
        status.rejected.fetch_add(e.rejected, Ordering::Relaxed);
        if e.rejected > 0 {
            tracing::warn!(source = %task.key, records = e.rejected, topic = %task.dlq, "Input rejected to the dead-letter topic; its sluice.error headers say why.");
        }
        Ok(())
    }
}
