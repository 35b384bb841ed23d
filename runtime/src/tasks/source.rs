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

use super::positions::{SharedPositions, state_key, wait_stable};
use super::{TaskError, dead_letter, record_bytes};

/// Records a poll may return.
const MAX_POLL: usize = 10_000;

/// In a cluster: where a source makes the topics it writes that did not exist (a CDC
/// source's per table, its store's changelog): as its pipeline's, led where it runs.
#[derive(Debug, Clone)]
pub struct SourceCluster {
    /// The cluster's placement of pipelines.
    pub placement: sluice_kafka::pipelines::Placement,
    /// The source's pipeline.
    pub pipeline: String,
}

/// A source task's settings.
#[derive(Debug)]
pub struct SourceTask {
    /// In a cluster, how it makes topics.
    pub cluster: Option<SourceCluster>,
    /// The log.
    pub log: Log,
    /// `<pipeline>/<source>`: the position key.
    pub key: String,
    /// Its transactional id (`sluice-source-<key>`, in a cluster made to land in the
    /// pipeline's partition).
    pub transactional_id: String,
    /// In a cluster: the transactional id is coordinated by the cluster.
    pub replicated: bool,
    /// The topic it writes.
    pub topic: String,
    /// Its dead-letter topic.
    pub dlq: String,
    /// The committed positions (their topic is where this task writes its own).
    pub positions: SharedPositions,
    /// The positions' topic.
    pub positions_topic: String,
    /// Exactly-once or at-least-once.
    pub guarantee: Guarantee,
    /// How often an epoch commits.
    pub commit_interval: std::time::Duration,
    /// Where a source that keeps a local store has it (see `Source::store_name`).
    pub state: Option<sluice_state::StateEnv>,
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

fn state_err(e: sluice_state::StateError) -> TaskError {
    TaskError::Retryable(format!("source state: {e}"))
}

impl SourceTask {
    /// Makes `topic` (one partition, `config`) unless it exists: the pipeline's in a
    /// cluster, else this log's.
    fn make_topic(&self, topic: &str, config: &[(String, String)]) -> Result<(), TaskError> {
        if let Some(c) = &self.cluster {
            return c
                .placement
                .create_topic(&c.pipeline, topic, 1, config)
                .map_err(|e| {
                    let reason = format!("topic '{topic}': {e}");
                    if e.is_transient() {
                        TaskError::Retryable(reason)
                    } else {
                        TaskError::Fatal(reason)
                    }
                });
        }
        if self.log.topic(topic).is_err() {
            match self.log.create_topic(topic, 1, config) {
                Ok(()) | Err(sluice_log::LogError::TopicExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Gives a source that keeps a store its store as the log has committed it: a new one,
    /// or the last attempt's with what that attempt did not commit undone.
    fn open_store(&self, source: &mut dyn Source) -> Result<(), TaskError> {
        let Some(name) = source.store_name() else {
            return Ok(());
        };
        if let Some(store) = source.store() {
            use sluice_state::StateStore as _;
            store.abort();
            store.restore(&self.log).map_err(state_err)?;
            return Ok(());
        }
        let Some(env) = &self.state else {
            return Ok(());
        };
        use sluice_state::StateStore as _;
        let changelog = sluice_state::ChangelogTopic::new(format!("{name}-changelog"), 0, 1);
        if self.cluster.is_some() {
            // Made first as the pipeline's, so that it moves with it (the store's restore
            // then finds it).
            self.make_topic(
                &changelog.topic,
                &[("cleanup.policy".to_string(), "compact".to_string())],
            )?;
        }
        let mut store = env
            .open_kv(sluice_state::StoreId::new(&name, 0), changelog)
            .map_err(state_err)?;
        store.restore(&self.log).map_err(state_err)?;
        source.attach_store(store);
        Ok(())
    }

    /// One attempt: resume `source` from its committed position and run epochs until the
    /// task stops.
    pub fn attempt(&self, ctx: &TaskContext, source: &mut dyn Source) -> Result<(), TaskError> {
        // The producer first: a transactional one aborts what an earlier instance of this
        // task left open, before the position is read.
        let producer =
            self.guarantee
                .producer_in(&self.log, &self.transactional_id, self.replicated)?;
        wait_stable(&self.log, &self.positions_topic, &ctx.stop)?;
        let (position, state) = {
            let mut positions = self.positions.lock();
            positions.catch_up(&self.log)?;
            positions.get(&self.key)
        };
        source.restore(state)?;
        self.open_store(source)?;
        source.open(position.as_deref())?;
        *ctx.status.error.lock() = None;
        let mut run = SourceRun {
            task: self,
            ctx,
            source,
            producer,
            epoch: None,
            made: std::collections::HashSet::new(),
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
    /// The topics made (or found) since the attempt began.
    made: std::collections::HashSet<String>,
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
            self.task.make_topic(topic, &[])?;
            // A subject with no version yet is the source's to set up (also after a crash
            // between the topic's creation and this).
            if registry.versions(&subject).is_empty() {
                registry.set_compatibility(
                    Some(&subject),
                    sluice_log::schema::CompatibilityLevel::None,
                )?;
            }
            registry.register(&subject, schema)?;
        }
        for (topic, r) in batch.routed {
            // A table seen for the first time: its topic is made like the source's (one
            // partition, the broker's defaults).
            if !self.made.contains(&topic) {
                self.task.make_topic(&topic, &[])?;
                self.made.insert(topic.clone());
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
        // The source's store changes go to its changelog in the same transaction; the
        // store takes them as committed once the transaction is. At least once, they go
        // after the position: a crash in between leaves the store behind its position
        // (a value not filled), never ahead of it (a value from the future).
        let mut store_next = None;
        let exactly_once = task.guarantee == Guarantee::ExactlyOnce;
        if !exactly_once {
            self.producer.flush()?;
            sluice_log::fault::point("source-before-commit");
            for r in std::mem::take(&mut records) {
                self.producer.send(&task.positions_topic, r)?;
            }
            self.producer.flush()?;
        }
        if let Some(store) = self.source.store() {
            use sluice_state::StateStore as _;
            let cl = store.changelog().clone();
            let changes: Vec<_> = store.changes().collect();
            let mut last = None;
            for c in changes {
                if let Some(info) =
                    self.producer
                        .send_to(&cl.topic, cl.partition, c.into_record(now))?
                {
                    last = last.max(Some(info.last_offset));
                }
            }
            for (topic, partition, info) in self.producer.flush()? {
                if *topic == *cl.topic && partition == cl.partition {
                    last = last.max(Some(info.last_offset));
                }
            }
            store_next = Some(last.map_or(store.applied_offset(), |l| l + 1));
        }
        if exactly_once {
            for r in records {
                self.producer.send(&task.positions_topic, r)?;
            }
            sluice_log::fault::point("source-before-commit");
            self.producer.commit_transaction()?;
        } else {
            self.producer.flush()?;
        }
        if let (Some(next), Some(store)) = (store_next, self.source.store()) {
            use sluice_state::StateStore as _;
            store.commit(next).map_err(state_err)?;
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
