//! Persistent queries: each runs as a task on its own thread, reading its source
//! read_committed and writing its results, its dead letters, its state changes and its input
//! positions in one log transaction per epoch (DESIGN.md, "Exactly-once").
//!
//! ```text
//!  source topic ──poll──► Dataflow ──rows──► sink topic        ┐
//!   (read_committed)        │   └─rejected─► <sink topic>.dlq   │ one transaction
//!                           └─state──────► <query>-changelog    │ per epoch
//!  positions ─────────────────────────────► __consumer_offsets  ┘ (commit interval)
//! ```
//!
//! In a cluster a query belongs to its pipeline ([`RunnerConfig::owner`]): its topics are
//! made through the cluster and led where the pipeline runs, its transactional id is one
//! the pipeline's node coordinates, and its positions go to the pipeline's positions topic
//! (key `query:<id>`, every input partition's) instead of the node's `__consumer_offsets`,
//! so that the node the pipeline moves to fences it and resumes it where it committed.
//!
//! After a crash the transaction of the unfinished epoch is aborted (the new producer
//! instance fences the old one), the stores restore to the last committed epoch and the
//! consumer resumes from the positions committed with it: nothing is lost or repeated.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_log::{
    Consumer, ConsumerConfig, Isolation, Log, LogError, OffsetReset, Producer, Record,
    TopicPartition,
};
use sluice_state::StateEnv;
pub use sluice_task::Guarantee;
use sluice_task::{
    DeadLetter, Epochs, StopToken, TaskContext, TaskHandle, TaskSpec, TaskStatus, Wait,
    send_or_dead_letter,
};

use crate::ast::SourceKind;
use crate::catalog::{QueryDef, SourceDef};
use crate::error::{Result, SqlError};
use crate::format::Input;
use crate::merge::Merger;
use crate::query::{CompiledQuery, Dataflow, Step};
use crate::record_cache::RecordCache;

/// How often tasks commit unless told otherwise: 100 ms, Kafka Streams' default under
/// exactly-once. Each stage of a pipeline (source, query, sink) makes its output visible at
/// its commit, so end-to-end latency grows by up to one interval per stage; an epoch costs
/// one transaction (a few small records), so 10 a second per task is cheap.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// How persistent queries run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerConfig {
    /// How often an epoch commits (results become visible, state becomes durable).
    pub commit_interval: Duration,
    /// Records fetched per poll.
    pub max_poll_records: usize,
    /// Exactly-once (one transaction per epoch) or at-least-once.
    pub guarantee: Guarantee,
    /// Bytes of results a query whose result is a table holds per epoch to write only each
    /// key's latest update ([`crate::record_cache`]; ksqlDB's `cache.max.bytes.buffering`).
    /// `0` writes every update.
    pub cache_max_bytes: usize,
    /// In a cluster, the pipeline the query belongs to (see the module docs); `None` on a
    /// worker alone.
    pub owner: Option<sluice_log::OwnerRef>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            max_poll_records: 8192,
            guarantee: Guarantee::ExactlyOnce,
            cache_max_bytes: crate::record_cache::DEFAULT_CACHE_MAX_BYTES,
            owner: None,
        }
    }
}

/// Counters and state of a running query: the status every task has.
pub type QueryStats = TaskStatus;

/// The consumer group holding a query's committed positions.
pub fn query_group(id: &str) -> String {
    format!("_sluice_query_{id}")
}

/// The key of query `id`'s positions in its pipeline's positions topic, in a cluster.
pub fn positions_key(id: &str) -> String {
    format!("query:{id}")
}

/// The dead-letter topic of a query writing `sink_topic` (the one rule:
/// `sluice_task::dlq_topic`, with the output topic as the owner).
pub fn dlq_topic(sink_topic: &str) -> String {
    sluice_task::dlq_topic(sink_topic)
}

#[derive(Debug)]
struct Handle {
    config: RunnerConfig,
    task: TaskHandle,
}

impl sluice_task::Failure for SqlError {
    /// The log's own refusals (a deleted topic, a record over its size limit) and its
    /// closing cannot pass by retrying; everything else (I/O, state, a transaction in the
    /// way) may, so the query restarts from its last committed epoch.
    fn is_retryable(&self) -> bool {
        match self {
            SqlError::Log(e) => !e.is_user_error() && !matches!(e, LogError::Closed),
            _ => true,
        }
    }

    fn is_shutdown(&self) -> bool {
        matches!(self, SqlError::Log(LogError::Closed))
    }
}

/// Runs persistent queries.
#[derive(Debug)]
pub struct QueryManager {
    log: Log,
    env: StateEnv,
    config: RunnerConfig,
    /// Per-query settings (from the pipeline that declares the query), over `config`.
    overrides: BTreeMap<String, RunnerConfig>,
    running: BTreeMap<String, Handle>,
    /// Queries that could not start, with the reason (shown as FAILED until they start or
    /// are terminated).
    failed: BTreeMap<String, String>,
}

impl QueryManager {
    /// A manager keeping query state in `env`.
    pub fn new(log: &Log, env: StateEnv, config: RunnerConfig) -> QueryManager {
        QueryManager {
            log: log.clone(),
            env,
            config,
            overrides: BTreeMap::new(),
            running: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// Sets how the query `id` runs from its next start; true when that differs from how it
    /// runs now (the caller restarts it).
    pub fn configure(&mut self, id: &str, config: RunnerConfig) -> bool {
        let changed = self.running.get(id).is_some_and(|h| h.config != config);
        self.overrides.insert(id.to_string(), config);
        changed
    }

    /// The settings of queries without their own.
    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// Whether the query `id` is running.
    pub fn is_running(&self, id: &str) -> bool {
        self.running.contains_key(id)
    }

    /// Starts a query (it resumes from its committed state and positions, if any).
    pub fn start(&mut self, def: &QueryDef, query: CompiledQuery, sink: SourceDef) -> Result<()> {
        if self.running.contains_key(&def.id) {
            return Ok(());
        }
        let dlq = dlq_topic(&sink.topic);
        let config = self.overrides.get(&def.id).unwrap_or(&self.config).clone();
        match &config.owner {
            Some(owner) => {
                owner.check_writes(&sink.topic)?;
                owner.create_topic(&dlq, 1, &[])?;
            }
            None => match self.log.create_topic(&dlq, 1, &[]) {
                Ok(()) | Err(LogError::TopicExists(_)) => {}
                Err(e) => return Err(e.into()),
            },
        }
        let task = Task {
            id: def.id.clone(),
            log: self.log.clone(),
            env: self.env.clone(),
            config: config.clone(),
            query,
            sink,
            dlq,
        };
        let spec = TaskSpec::new("query", def.id.clone(), StopToken::new());
        // The query's consumer waits on the log: wake it when the task stops.
        let log = self.log.clone();
        spec.stop.on_stop(move || log.wake_waiters());
        let task = sluice_task::spawn(spec, move |ctx| task.attempt(ctx))
            .map_err(|e| SqlError::Invalid(format!("cannot start query {}: {e}", def.id)))?;
        self.running.insert(def.id.clone(), Handle { config, task });
        Ok(())
    }

    /// Stops a query after committing its current epoch.
    pub fn stop(&mut self, id: &str) {
        if let Some(mut h) = self.running.remove(id) {
            h.task.stop();
        }
    }

    /// Stops the queries of pipeline `pipeline` in a cluster (each commits its current
    /// epoch first): the pipeline runs elsewhere now, or not at all. They stay in the
    /// catalog, to start where the pipeline runs.
    pub fn stop_owned_by(&mut self, pipeline: &str) -> Vec<String> {
        let ids: Vec<String> = self
            .running
            .iter()
            .filter(|(_, h)| {
                h.config
                    .owner
                    .as_ref()
                    .is_some_and(|o| o.pipeline() == pipeline)
            })
            .map(|(id, _)| id.clone())
            .collect();
        // All told first, so that they end their epochs together.
        for id in &ids {
            if let Some(h) = self.running.get(id) {
                h.task.signal_stop();
            }
        }
        for id in &ids {
            self.stop(id);
        }
        ids
    }

    /// The pipeline query `id` runs for, in a cluster.
    pub fn owner_of(&self, id: &str) -> Option<String> {
        let h = self.running.get(id)?;
        Some(h.config.owner.as_ref()?.pipeline().to_string())
    }

    /// Stops every query.
    pub fn stop_all(&mut self) {
        let ids: Vec<String> = self.running.keys().cloned().collect();
        for h in self.running.values() {
            h.task.signal_stop();
        }
        for id in ids {
            self.stop(&id);
        }
    }

    /// Records that the query `id` could not start, and why.
    pub fn set_failed(&mut self, id: &str, reason: String) {
        self.failed.insert(id.to_string(), reason);
    }

    /// Forgets a start failure (the query started, or was terminated).
    pub fn clear_failed(&mut self, id: &str) {
        self.failed.remove(id);
    }

    /// Why the query `id` could not start, if it could not.
    pub fn failure(&self, id: &str) -> Option<&str> {
        self.failed.get(id).map(String::as_str)
    }

    /// The counters of a running query.
    pub fn stats(&self, id: &str) -> Option<Arc<QueryStats>> {
        self.running.get(id).map(|h| Arc::clone(&h.task.status))
    }

    /// The state environment.
    pub fn env(&self) -> &StateEnv {
        &self.env
    }
}

impl Drop for QueryManager {
    fn drop(&mut self) {
        self.stop_all();
    }
}

struct Task {
    id: String,
    log: Log,
    env: StateEnv,
    config: RunnerConfig,
    query: CompiledQuery,
    sink: SourceDef,
    dlq: String,
}

impl Task {
    fn group(&self) -> String {
        query_group(&self.id)
    }

    /// One attempt: restore the state to the last committed epoch, resume from the
    /// positions committed with it, and run epochs until the task stops.
    fn attempt(&self, ctx: &TaskContext) -> Result<()> {
        let owner = self.config.owner.as_ref();
        // In a cluster the producer comes first: its start fences the query's former
        // instance (on the pipeline's former node) and ends what it left open, in the
        // changelogs and the positions topic read below.
        let base = format!("sluice-query-{}", self.id);
        let producer = match owner {
            Some(owner) => self.config.guarantee.producer_in(
                &self.log,
                &owner.transactional_id(&base)?,
                true,
            )?,
            None => self.config.guarantee.producer(&self.log, &base)?,
        };
        let store_name = self.id.to_lowercase();
        let env = self.env.with_owner(self.config.owner.clone());
        let flow = Dataflow::open(
            self.query.clone(),
            Some((&env, &self.log, store_name.as_str())),
        )?;
        let (routes, tps) = crate::merge::inputs(&self.log, &self.query)?;
        let mut consumer = self.log.consumer(ConsumerConfig {
            group: Some(self.group()),
            isolation: Isolation::ReadCommitted,
            auto_offset_reset: OffsetReset::Earliest,
            max_poll_records: self.config.max_poll_records,
            enable_auto_commit: false,
            ..ConsumerConfig::default()
        });
        consumer.assign(&tps)?;
        let positions = match owner {
            Some(owner) => self.restore_positions(owner, &mut consumer, &tps, ctx)?,
            None => BTreeMap::new(),
        };
        *ctx.status.error.lock() = None;
        let mut run = QueryRun {
            task: self,
            ctx,
            flow,
            consumer,
            producer,
            lanes: tps.len(),
            routes,
            positions,
            merger: Merger::for_query(&self.query)?,
            dropped: 0,
            open_since: None,
            rejected_in_epoch: 0,
            full: false,
            cache: (self.sink.kind == SourceKind::Table && self.config.cache_max_bytes > 0)
                .then(|| RecordCache::new(self.config.cache_max_bytes)),
        };
        sluice_task::run_epochs(ctx, self.config.commit_interval, &mut run)
    }

    /// In a cluster: the positions kept in the pipeline's positions topic are the truth
    /// (this node may never have run the query, or ran it before another node did); an
    /// input partition without one starts at its beginning. The node's group mirrors them.
    /// Returns them, to be written whole at every commit.
    fn restore_positions(
        &self,
        owner: &sluice_log::OwnerRef,
        consumer: &mut Consumer,
        tps: &[TopicPartition],
        ctx: &TaskContext,
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        let topic = owner.positions_topic();
        let key = positions_key(&self.id);
        let kept: Vec<(String, u32, i64)> =
            match sluice_task::kept::latest(&self.log, topic, key.as_bytes(), &ctx.stop)? {
                None => Vec::new(),
                Some(v) => serde_json::from_slice(&v).map_err(|e| {
                    SqlError::Invalid(format!(
                        "{topic}: the positions kept for query {} do not parse: {e}",
                        self.id
                    ))
                })?,
            };
        let mut positions = BTreeMap::new();
        for tp in tps {
            let partition = self.log.partition(&tp.topic, tp.partition)?;
            let offset = match kept
                .iter()
                .find(|(t, p, _)| *t == tp.topic && *p == tp.partition)
            {
                // An input another pipeline (or a client) writes may be led elsewhere, and
                // this node's copy behind: a position past its end would be out of range,
                // and the consumer would start over from the earliest record.
                Some((_, _, o)) if *o > partition.log_end_offset() => {
                    return Err(LogError::ClusterUnavailable(format!(
                        "{}-{}: this node's copy ends at {}, before query {}'s kept position {o}; it starts once the copy has caught up",
                        tp.topic,
                        tp.partition,
                        partition.log_end_offset(),
                        self.id
                    ))
                    .into());
                }
                Some((_, _, o)) => *o,
                None => partition.log_start_offset(),
            };
            consumer.seek(tp, offset);
            positions.insert(tp.clone(), offset);
        }
        let offsets: Vec<(TopicPartition, i64)> =
            positions.iter().map(|(tp, o)| (tp.clone(), *o)).collect();
        if !offsets.is_empty() {
            self.log.commit_offsets(&self.group(), None, &offsets)?;
        }
        Ok(positions)
    }
}

struct QueryRun<'a> {
    task: &'a Task,
    ctx: &'a TaskContext,
    flow: Dataflow,
    consumer: Consumer,
    producer: Producer,
    /// Input partitions, of every input topic.
    lanes: usize,
    /// Each input topic's sources (indices in FROM order; one without joins).
    routes: crate::merge::Routes,
    positions: BTreeMap<TopicPartition, i64>,
    merger: Merger,
    /// Dropped records counted so far (the flow's counter is cumulative).
    dropped: u64,
    open_since: Option<Instant>,
    /// Rejections in the open epoch (one warning per epoch, not per record).
    rejected_in_epoch: u64,
    /// The last step took as many records as it may: more may be ready.
    full: bool,
    /// A table result's latest record per key in the epoch (`None`: every record is written
    /// at once).
    cache: Option<RecordCache>,
}

impl Epochs for QueryRun<'_> {
    type Error = SqlError;

    fn step(&mut self, wait: &Wait) -> Result<()> {
        if self.flow.done() {
            // LIMIT reached: the query has nothing more to do but stay terminable.
            wait.sleep(wait.remaining());
            return Ok(());
        }
        // When the last step took a full batch, the merger may hold more that is ready:
        // look for new input without waiting for it.
        let timeout = if self.full {
            Duration::ZERO
        } else {
            wait.remaining()
        };
        let stop = wait.stop_token();
        let polled = self.consumer.poll_until(timeout, &|| stop.is_stopped())?;
        let records = self.merger.next(
            &mut self.consumer,
            polled,
            self.lanes,
            self.task.config.max_poll_records,
        )?;
        self.full = records.len() == self.task.config.max_poll_records;
        if records.is_empty() {
            return Ok(());
        }
        if self.open_since.is_none() {
            if self.task.config.guarantee == Guarantee::ExactlyOnce {
                self.producer.begin_transaction()?;
            }
            self.open_since = Some(Instant::now());
        }
        let mut out = 0;
        if self.flow.query().join.is_some() {
            // Every source's records in one pass, in timestamp order: a join decodes each
            // side's together and applies them in this order.
            let (items, record_of) = crate::merge::items(&records, &self.routes);
            let mut step = self.flow.process_mixed(&items)?;
            for r in step.rejected.iter_mut() {
                r.0 = record_of[r.0];
            }
            out += self.write_step(&records, step, 0)?;
        } else {
            let inputs: Vec<Input<'_>> = records.iter().map(Input::from).collect();
            for (step, offset) in self.process(0, &inputs)? {
                out += self.write_step(&records, step, offset.unwrap_or(0))?;
            }
        }
        let dropped = self.flow.dropped();
        if dropped > self.dropped {
            self.ctx
                .status
                .dropped
                .fetch_add(dropped - self.dropped, std::sync::atomic::Ordering::Relaxed);
            self.dropped = dropped;
        }
        self.ctx.status.moved(records.len() as u64, out, 0, 0);
        // The position after the last record of each partition (one map update per
        // partition, not per record).
        let mut last: BTreeMap<(Arc<str>, u32), i64> = BTreeMap::new();
        for r in &records {
            last.insert((Arc::clone(&r.topic), r.partition), r.offset + 1);
        }
        for ((topic, partition), next) in last {
            self.positions.insert(
                TopicPartition {
                    topic: topic.to_string(),
                    partition,
                },
                next,
            );
        }
        Ok(())
    }

    fn open_since(&self) -> Option<Instant> {
        self.open_since
    }

    fn commit(&mut self) -> Result<()> {
        let started = Instant::now();
        self.commit_epoch()?;
        self.open_since = None;
        self.ctx.status.committed(started);
        Ok(())
    }
}

impl QueryRun<'_> {
    /// Runs records of the query's `source`-th source through it: the steps and the index
    /// of the first record each is about.
    fn process(
        &mut self,
        source: usize,
        inputs: &[Input<'_>],
    ) -> Result<Vec<(Step, Option<usize>)>> {
        match self.flow.process_from(source, inputs) {
            Ok(step) => Ok(vec![(step, None)]),
            // An expression failed on some record (a division by zero, a bad cast) before
            // any state changed: find it record by record.
            Err(SqlError::Plan(_)) => inputs
                .iter()
                .enumerate()
                .map(|(i, input)| {
                    match self.flow.process_from(source, std::slice::from_ref(input)) {
                        Ok(step) => Ok((step, Some(i))),
                        Err(SqlError::Plan(e)) => {
                            Ok((Step::rejecting(self.flow.schema(), 0, e), Some(i)))
                        }
                        Err(e) => Err(e),
                    }
                })
                .collect(),
            Err(e) => Err(e),
        }
    }

    /// Writes a step's rows and dead letters (the step's record indices start at
    /// `record_offset` in `records`); returns the rows written.
    fn write_step(
        &mut self,
        records: &[sluice_log::ConsumerRecord],
        step: Step,
        record_offset: usize,
    ) -> Result<u64> {
        let task = self.task;
        let encoded = task.sink.encode(&step.batch)?;
        let mut written = 0;
        for (i, (((key, value), ts), deleted)) in encoded
            .into_iter()
            .zip(step.timestamps)
            .zip(step.deleted)
            .enumerate()
        {
            if deleted && key.is_none() {
                // Nothing to delete without a key.
                continue;
            }
            // A windowed result's key carries its window (one record per key and window).
            let key = match (task.sink.window, key, step.windows.get(i)) {
                (Some(w), Some(k), Some(&(start, end))) => {
                    Some(Bytes::from(w.encode(&k, start, end)))
                }
                (_, key, _) => key,
            };
            let record = Record {
                key,
                value: (!deleted).then(|| Bytes::from(value)),
                headers: Vec::new(),
                timestamp: ts,
            };
            match (self.cache.as_mut(), record.key.clone()) {
                (Some(cache), Some(key)) => {
                    if cache.put(key, record) {
                        written += self.drain_cache()?;
                    }
                }
                _ => written += self.send_result(record)?,
            }
        }
        let rejected = step.rejected.len() as u64;
        for (i, reason) in step.rejected {
            let r = &records[record_offset + i];
            let origin = format!("{}/{}/{}", r.topic, r.partition, r.offset);
            tracing::debug!(query = %task.id, record = %origin, reason = %reason, "Record rejected to the dead-letter topic.");
            let letter = DeadLetter {
                reason,
                origin,
                key: r.key.clone(),
                value: r.value.clone(),
                timestamp: Some(r.timestamp),
            };
            self.producer
                .send_to(&task.dlq, 0, letter.into_record(&self.ctx.label))?;
        }
        if rejected > 0 {
            self.ctx
                .status
                .rejected
                .fetch_add(rejected, std::sync::atomic::Ordering::Relaxed);
            self.rejected_in_epoch += rejected;
        }
        Ok(written)
    }

    /// Writes one result record (a dead letter if its topic refuses its size); returns the
    /// records written to the result topic.
    fn send_result(&mut self, record: Record) -> Result<u64> {
        let task = self.task;
        if send_or_dead_letter(
            &mut self.producer,
            &task.sink.topic,
            record,
            &task.dlq,
            &self.ctx.label,
        )? {
            return Ok(1);
        }
        self.ctx
            .status
            .rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.rejected_in_epoch += 1;
        Ok(0)
    }

    /// Writes the cached records; returns how many reached the result topic.
    fn drain_cache(&mut self) -> Result<u64> {
        let Some(cache) = self.cache.as_mut() else {
            return Ok(0);
        };
        let mut written = 0;
        for record in cache.drain() {
            written += self.send_result(record)?;
        }
        Ok(written)
    }

    /// Ends the epoch: state changes to the changelogs, positions to the group, commit, then
    /// the stores make the epoch durable locally (the epoch's state snapshot).
    ///
    /// At least once, there is no transaction: outputs and changelog records are flushed,
    /// then the positions are committed to the group, so a crash in between repeats the
    /// epoch's outputs.
    fn commit_epoch(&mut self) -> Result<()> {
        let cached = self.drain_cache()?;
        self.ctx.status.moved(0, cached, 0, 0);
        let task = self.task;
        let producer = &mut self.producer;
        let flow = &mut self.flow;
        flow.flush()?;
        let mut last: Vec<Option<i64>> = Vec::new();
        let mut changelogs = Vec::new();
        let now = sluice_log::record::now_ms();
        for store in flow.stores_mut() {
            let cl = store.changelog().clone();
            let mut l = None;
            let changes: Vec<_> = store.changes().collect();
            for c in changes {
                if let Some(info) = producer.send_to(&cl.topic, cl.partition, c.into_record(now))? {
                    l = l.max(Some(info.last_offset));
                }
            }
            last.push(l);
            changelogs.push(cl);
        }
        for (topic, partition, info) in producer.flush()? {
            for (i, cl) in changelogs.iter().enumerate() {
                if cl.topic.as_str() == &*topic && cl.partition == partition {
                    last[i] = last[i].max(Some(info.last_offset));
                }
            }
        }
        let offsets: Vec<(TopicPartition, i64)> = self
            .positions
            .iter()
            .map(|(tp, o)| (tp.clone(), *o))
            .collect();
        // In a cluster, every input partition's position (those without news as restored),
        // so the record read at the next start is whole.
        let kept = match &task.config.owner {
            Some(owner) if !offsets.is_empty() => {
                let value: Vec<(&str, u32, i64)> = offsets
                    .iter()
                    .map(|(tp, o)| (tp.topic.as_str(), tp.partition, *o))
                    .collect();
                let value = serde_json::to_vec(&value)
                    .map_err(|e| SqlError::Invalid(format!("query {}: positions: {e}", task.id)))?;
                Some((
                    owner.positions_topic().to_string(),
                    Record {
                        key: Some(Bytes::from(positions_key(&task.id))),
                        value: Some(Bytes::from(value)),
                        headers: Vec::new(),
                        timestamp: now,
                    },
                ))
            }
            _ => None,
        };
        if task.config.guarantee == Guarantee::AtLeastOnce {
            sluice_log::fault::point("query-before-commit");
            match kept {
                Some((topic, record)) => {
                    producer.send(&topic, record)?;
                    producer.flush()?;
                    self.consumer.commit_offsets(&offsets)?;
                }
                None if !offsets.is_empty() => self.consumer.commit_offsets(&offsets)?,
                None => {}
            }
        } else {
            match kept {
                Some((topic, record)) => {
                    producer.send(&topic, record)?;
                }
                None if !offsets.is_empty() => {
                    producer.send_offsets_to_transaction(&task.group(), &offsets)?;
                }
                None => {}
            }
            sluice_log::fault::point("query-before-commit");
            if let Err(e) = producer.commit_transaction() {
                let _ = producer.abort_transaction();
                if let Some(cache) = self.cache.as_mut() {
                    cache.clear();
                }
                flow.abort()?;
                return Err(e.into());
            }
        }
        sluice_log::fault::point("query-after-commit");
        if task.config.owner.is_some()
            && task.config.guarantee == Guarantee::ExactlyOnce
            && !offsets.is_empty()
        {
            // The node's view, for lag and `sluice groups`; the kept positions are the
            // pipeline's.
            self.consumer.commit_offsets(&offsets)?;
        }
        for (i, (store, l)) in flow.stores_mut().into_iter().zip(last).enumerate() {
            let next = l.map_or(store.applied_offset(), |l| l + 1);
            store
                .commit(next)
                .map_err(|e| SqlError::Invalid(format!("query {}: state commit: {e}", task.id)))?;
            if i == 0 {
                // The first store holds the epoch locally, the others not yet.
                sluice_log::fault::point("state-snapshot");
            }
        }
        let rejected = std::mem::take(&mut self.rejected_in_epoch);
        if rejected > 0 {
            tracing::warn!(
                query = %task.id,
                records = rejected,
                topic = %task.dlq,
                "Records were rejected to the dead-letter topic; its sluice.error headers say why."
            );
        }
        Ok(())
    }
}
