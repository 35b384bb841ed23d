//! The sink task: committed records of its topic go to its connector; once the connector
//! says its output is durable up to some offsets, those offsets commit to the sink's group
//! in one transaction with the dead letters of the records before them. Sinks write
//! idempotently, so a replay after a crash rewrites the same output.

use std::sync::atomic::Ordering;
use std::time::Instant;

use sluice_connectors::{Durable, Rejected, Sink};
use sluice_log::{
    Consumer, ConsumerConfig, Isolation, Log, OffsetReset, Producer, ProducerConfig, TopicPartition,
};
use sluice_task::{Epochs, TaskContext, Wait};

use super::positions::{SharedPositions, wait_stable};
use super::{TaskError, dead_letter, record_bytes};

/// Records a poll may return.
const MAX_POLL: usize = 10_000;

/// A sink task's settings.
#[derive(Debug)]
pub struct SinkTask {
    /// The log.
    pub log: Log,
    /// Its consumer group.
    pub group: String,
    /// Its transactional id (`sluice-sink-<group>`, in a cluster made to land in the
    /// pipeline's partition).
    pub transactional_id: String,
    /// In a cluster: the pipeline's positions, where the sink keeps its offsets (key: its
    /// group), in the transaction of its dead letters, so they move with the pipeline; the
    /// node's group only mirrors them (for lag and `sluice groups`). The transactional id
    /// is the cluster's then.
    pub cluster: Option<SharedPositions>,
    /// The group name older versions used, when it belongs to this sink alone: its
    /// offsets are taken over once.
    pub legacy_group: Option<String>,
    /// The topic it reads.
    pub topic: String,
    /// Its dead-letter topic.
    pub dlq: String,
    /// How often an epoch commits.
    pub commit_interval: std::time::Duration,
}

impl SinkTask {
    /// The transactional producer of its commits.
    fn producer(&self) -> Result<Producer, TaskError> {
        Ok(self.log.transactional_producer(
            &self.transactional_id,
            ProducerConfig {
                replicated: self.cluster.is_some(),
                ..ProducerConfig::default()
            },
        )?)
    }

    /// In a cluster, the node's group takes the offsets kept in the pipeline's positions
    /// (this node may never have run the sink, or run it before another node did): them,
    /// every partition's.
    fn restore_offsets(
        &self,
        positions: &SharedPositions,
        tps: &[TopicPartition],
        stop: &sluice_task::StopToken,
    ) -> Result<Durable, TaskError> {
        let topic = positions.lock().topic().to_string();
        wait_stable(&self.log, &topic, stop)?;
        let kept = {
            let mut p = positions.lock();
            p.catch_up(&self.log)?;
            p.get(&self.group).0
        };
        // The kept offsets are the truth: a partition without one starts at the beginning,
        // whatever this node's group says (from when it last ran the sink, or before a
        // reset made elsewhere).
        let kept: Durable = match kept {
            None => Durable::new(),
            Some(kept) => serde_json::from_slice(&kept).map_err(|e| {
                TaskError::Fatal(format!(
                    "{topic}: the offsets kept for sink group {} do not parse: {e}",
                    self.group
                ))
            })?,
        };
        let mut offsets = Vec::new();
        let mut restored = Durable::new();
        for tp in tps {
            let offset = match kept.get(&tp.partition) {
                Some(o) => *o,
                None => self
                    .log
                    .partition(&tp.topic, tp.partition)?
                    .log_start_offset(),
            };
            restored.insert(tp.partition, offset);
            if self.log.committed(&self.group, tp) != Some(offset) {
                offsets.push((tp.clone(), offset));
            }
        }
        if !offsets.is_empty() {
            self.log.commit_offsets(&self.group, None, &offsets)?;
        }
        Ok(restored)
    }

    /// A sink first started by an older version committed under its old group name: the
    /// new group starts where the old one was, once.
    fn take_over_legacy_offsets(&self, tps: &[TopicPartition]) -> Result<(), TaskError> {
        let Some(legacy) = &self.legacy_group else {
            return Ok(());
        };
        if tps
            .iter()
            .any(|tp| self.log.committed(&self.group, tp).is_some())
        {
            return Ok(());
        }
        let offsets: Vec<(TopicPartition, i64)> = tps
            .iter()
            .filter_map(|tp| Some((tp.clone(), self.log.committed(legacy, tp)?)))
            .collect();
        if !offsets.is_empty() {
            tracing::info!(group = %self.group, legacy = %legacy, "The sink's consumer group was renamed; it continues from the old group's offsets.");
            self.log.commit_offsets(&self.group, None, &offsets)?;
        }
        Ok(())
    }

    /// Refuses to start when the group's committed offset is past the log's end: the log
    /// lost records it had acknowledged. Starting over would make the sink replace output it
    /// exported with what is left, so it stops and says so; an operator decides (restore the
    /// data directory, or move the group with `sluice groups reset-offsets`). The finding is
    /// recorded in the log's data-loss list, so it stands after the log grows past that
    /// offset again and across restarts, until the group's offset is moved.
    fn check_offsets(&self, tps: &[TopicPartition]) -> Result<(), TaskError> {
        let reason = |committed: i64| {
            format!(
                "sink group {} had committed offset {committed}, past the log's end",
                self.group
            )
        };
        let losses = self.log.data_loss();
        for tp in tps {
            let Some(committed) = self.log.committed(&self.group, tp) else {
                continue;
            };
            let end = self
                .log
                .partition(&tp.topic, tp.partition)?
                .info()
                .high_watermark;
            let found_before = losses.iter().find(|l| {
                l.topic == tp.topic && l.partition == tp.partition && l.reason == reason(committed)
            });
            let lost = match found_before {
                Some(l) => (l.from, l.to),
                None if committed > end => {
                    tracing::error!(group = %self.group, topic = %tp.topic, partition = tp.partition, committed, end, "The log lost records this sink had read; the sink stops.");
                    self.log.report_data_loss(sluice_log::DataLoss {
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                        from: end,
                        to: committed,
                        reason: reason(committed),
                        detected_at: sluice_log::record::now_ms(),
                    })?;
                    (end, committed)
                }
                None => continue,
            };
            return Err(TaskError::Fatal(format!(
                "topic {} partition {}: this sink's committed offset {committed} was past the log's end {}: the log lost records {}..{}. The sink stops rather than overwrite what it exported; restore the data directory, or move the group on with `sluice groups reset-offsets {} --topic {} --to-offset N`",
                tp.topic, tp.partition, lost.0, lost.0, lost.1, self.group, tp.topic
            )));
        }
        Ok(())
    }

    /// One attempt: resume from the group's committed offsets and run epochs until the
    /// task stops.
    pub fn attempt(&self, ctx: &TaskContext, sink: &mut dyn Sink) -> Result<(), TaskError> {
        let partitions = self.log.topic(&self.topic)?.partition_count();
        let mut consumer = self.log.consumer(ConsumerConfig {
            group: Some(self.group.clone()),
            isolation: Isolation::ReadCommitted,
            auto_offset_reset: OffsetReset::Earliest,
            enable_auto_commit: false,
            max_poll_records: MAX_POLL,
            ..ConsumerConfig::default()
        });
        let tps: Vec<TopicPartition> = (0..partitions)
            .map(|p| TopicPartition {
                topic: self.topic.clone(),
                partition: p,
            })
            .collect();
        // In a cluster the producer comes first: its start fences the sink's former
        // instance (on the pipeline's former node) and ends what it left open in the
        // positions topic, where the offsets are read.
        // Each commit keeps every partition's offset (a partition without news keeps the
        // one restored here), so the record read at the next start is whole.
        let (producer, committed) = match &self.cluster {
            Some(positions) => {
                let producer = self.producer()?;
                let restored = self.restore_offsets(positions, &tps, &ctx.stop)?;
                (Some(producer), restored)
            }
            None => {
                self.take_over_legacy_offsets(&tps)?;
                (None, Durable::new())
            }
        };
        self.check_offsets(&tps)?;
        consumer.assign(&tps)?;
        // The schema as of this attempt. When another version is recorded, a sink that
        // writes with it ends the attempt, and the next one writes with the new version
        // (records not committed yet are written again, with it): a column a new version
        // adds is never dropped by a sink that started before it.
        let subject = sluice_log::value_subject(&self.topic);
        let registered = self.log.schemas().latest(&subject);
        sink.watch_stop(&ctx.stop);
        sink.open(registered.as_ref().map(|r| &r.schema))?;
        // Offsets and the dead letters of the records they pass commit together.
        let producer = match producer {
            Some(p) => p,
            None => self.producer()?,
        };
        *ctx.status.error.lock() = None;
        let mut run = SinkRun {
            task: self,
            ctx,
            sink,
            consumer,
            producer,
            dead: Vec::new(),
            committed,
            last_commit: Instant::now(),
            written: Durable::new(),
            flushed: Durable::new(),
            oldest_unflushed: None,
            subject,
            schema_id: registered.map(|r| r.id),
        };
        sluice_task::run_epochs(ctx, self.commit_interval, &mut run)
    }
}

struct SinkRun<'a> {
    task: &'a SinkTask,
    ctx: &'a TaskContext,
    sink: &'a mut dyn Sink,
    consumer: Consumer,
    producer: Producer,
    /// Records the sink rejected, until the offsets past them commit.
    dead: Vec<(u32, i64, Rejected)>,
    committed: Durable,
    last_commit: Instant,
    /// Per partition, the offset after the last record given to the sink.
    written: Durable,
    /// What the sink's last flush made durable.
    flushed: Durable,
    /// The timestamp of the oldest record given to the sink since the last commit.
    oldest_unflushed: Option<i64>,
    /// The schema subject of the topic's values.
    subject: String,
    /// The id of the schema the sink was opened with.
    schema_id: Option<u32>,
}

impl Epochs for SinkRun<'_> {
    type Error = TaskError;

    fn step(&mut self, wait: &Wait) -> Result<(), TaskError> {
        let stop = wait.stop_token();
        let records = self
            .consumer
            .poll_until(wait.remaining(), &|| stop.is_stopped())?;
        if records.is_empty() {
            return Ok(());
        }
        // Checked after the poll, before the records are written: a record that arrived
        // with a new schema version is written with it. These records are not written, so
        // nothing commits here (the consumer's position is past them); the next attempt
        // reads them again from the last commit.
        if self.sink.uses_schema() {
            let recorded = self.task.log.schemas().latest(&self.subject);
            if recorded.as_ref().map(|r| r.id) != self.schema_id {
                return Err(TaskError::Restart(format!(
                    "the schema of topic {} changed (now {}); the sink writes with it from its last commit",
                    self.task.topic,
                    recorded.map_or("none".to_string(), |r| format!("version {}", r.version))
                )));
            }
        }
        let rejected = self.sink.write(&records)?;
        let n = records.len() as u64;
        let bytes: u64 = records
            .iter()
            .map(|r| record_bytes(r.key.as_ref(), r.value.as_ref()))
            .sum();
        self.ctx
            .status
            .moved(n, n.saturating_sub(rejected.len() as u64), bytes, bytes);
        // A sink that does not say which record it rejected: the batch's last.
        let last = records.last().map_or((0, 0), |r| (r.partition, r.offset));
        self.dead.extend(rejected.into_iter().map(|r| {
            let (p, o) = r.at.unwrap_or(last);
            (p, o, r)
        }));
        for r in &records {
            self.written.insert(r.partition, r.offset + 1);
        }
        if let Some(oldest) = records.iter().map(|r| r.timestamp).min() {
            self.oldest_unflushed = Some(self.oldest_unflushed.map_or(oldest, |o| o.min(oldest)));
        }
        Ok(())
    }

    /// Open from the last commit once records were given: flushed until the sink's output
    /// is durable up to what it was given (a sink holding whole objects back reports less,
    /// and is asked again).
    fn open_since(&self) -> Option<Instant> {
        (!self.written.is_empty()).then_some(self.last_commit)
    }

    fn commit(&mut self) -> Result<(), TaskError> {
        // Durable first, then the offsets: a crash in between replays, and the sink
        // rewrites the same output. The sink says how far its output is durable.
        let started = Instant::now();
        let task = self.task;
        if self.written != self.flushed {
            self.flushed = self.sink.flush()?;
            self.dead
                .extend(self.sink.take_refused().into_iter().map(|r| {
                    let (p, o) = r.at.unwrap_or_default();
                    (p, o, r)
                }));
            sluice_log::fault::point("sink-after-flush");
        }
        // Where everything given is durable, commit the consumer's position rather than the
        // last record + 1: it is past transaction markers, so the group's lag reads 0 when
        // the sink has caught up.
        let mut offsets: Vec<(TopicPartition, i64)> = Vec::new();
        for (&p, &durable) in &self.flushed {
            let tp = TopicPartition {
                topic: task.topic.clone(),
                partition: p,
            };
            let target = match self.consumer.position(&tp) {
                Some(pos) if self.written.get(&p) == Some(&durable) => pos.max(durable),
                _ => durable,
            };
            if self.committed.get(&p) != Some(&target) {
                offsets.push((tp, target));
            }
        }
        if !offsets.is_empty() {
            let mut next = self.committed.clone();
            next.extend(offsets.iter().map(|(tp, o)| (tp.partition, *o)));
            let (passed, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.dead)
                .into_iter()
                .partition(|(p, o, _)| next.get(p).is_some_and(|c| o < c));
            self.dead = kept;
            let rejected = passed.len();
            self.producer.begin_transaction()?;
            for (_, _, r) in passed {
                self.producer
                    .send(&task.dlq, dead_letter(r).into_record(&self.ctx.label))?;
            }
            match &task.cluster {
                None => self
                    .producer
                    .send_offsets_to_transaction(&task.group, &offsets)?,
                Some(positions) => {
                    let topic = positions.lock().topic().to_string();
                    let value = serde_json::to_vec(&next).map_err(|e| {
                        TaskError::Fatal(format!("sink group {}: offsets: {e}", task.group))
                    })?;
                    let record = sluice_log::Record {
                        key: Some(bytes::Bytes::from(task.group.clone())),
                        value: Some(bytes::Bytes::from(value)),
                        headers: Vec::new(),
                        timestamp: sluice_log::record::now_ms(),
                    };
                    self.producer.send(&topic, record)?;
                }
            }
            self.producer.commit_transaction()?;
            if task.cluster.is_some() {
                // The node's view, for lag and `sluice groups`; the kept offsets are the
                // pipeline's positions.
                task.log.commit_offsets(&task.group, None, &offsets)?;
            }
            self.committed = next;
            self.ctx.status.committed(started);
            // The oldest record this commit made durable: its end-to-end latency.
            if let Some(ts) = self.oldest_unflushed.take() {
                let ms = (sluice_log::record::now_ms() - ts).max(0) as u64;
                self.ctx
                    .status
                    .record_latency
                    .observe(std::time::Duration::from_millis(ms));
            }
            if rejected > 0 {
                self.ctx
                    .status
                    .rejected
                    .fetch_add(rejected as u64, Ordering::Relaxed);
                tracing::warn!(sink = %task.group, records = rejected, topic = %task.dlq, "Records the sink cannot write went to the dead-letter topic; their sluice.error headers say why.");
            }
        }
        self.last_commit = Instant::now();
        Ok(())
    }
}
