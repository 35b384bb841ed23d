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
//! After a crash the transaction of the unfinished epoch is aborted (the new producer
//! instance fences the old one), the stores restore to the last committed epoch and the
//! consumer resumes from the positions committed with it: nothing is lost or repeated.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use sluice_log::{
    ConsumerConfig, Header, Isolation, Log, LogError, OffsetReset, Producer, ProducerConfig,
    Record, TopicPartition,
};
use sluice_state::StateEnv;

use crate::catalog::{QueryDef, SourceDef};
use crate::error::{Result, SqlError};
use crate::format::Input;
use crate::query::{CompiledQuery, Dataflow, Step};

/// What a task promises after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    /// Outputs, state changes and input positions commit in one log transaction per epoch:
    /// after a crash nothing is lost and nothing is repeated.
    #[default]
    ExactlyOnce,
    /// Outputs are written (idempotently, but outside transactions), then positions are
    /// committed: after a crash the work of the unfinished epoch is done again, so outputs
    /// may repeat; nothing is lost.
    AtLeastOnce,
}

impl Guarantee {
    /// The producer a task writes through: transactional (as `transactional_id`, fencing an
    /// earlier instance and aborting what it left open) for exactly-once, idempotent for
    /// at-least-once.
    pub fn producer(self, log: &Log, transactional_id: &str) -> sluice_log::Result<Producer> {
        match self {
            Guarantee::ExactlyOnce => {
                log.transactional_producer(transactional_id, ProducerConfig::default())
            }
            Guarantee::AtLeastOnce => log.producer(ProducerConfig::default()),
        }
    }
}

impl std::fmt::Display for Guarantee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Guarantee::ExactlyOnce => "exactly-once",
            Guarantee::AtLeastOnce => "at-least-once",
        })
    }
}

/// How persistent queries run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerConfig {
    /// How often an epoch commits (results become visible, state becomes durable).
    pub commit_interval: Duration,
    /// Records fetched per poll.
    pub max_poll_records: usize,
    /// Exactly-once (one transaction per epoch) or at-least-once.
    pub guarantee: Guarantee,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            commit_interval: Duration::from_secs(1),
            max_poll_records: 8192,
            guarantee: Guarantee::ExactlyOnce,
        }
    }
}

/// Counters and state of a running query.
#[derive(Debug, Default)]
pub struct QueryStats {
    /// Input records read.
    pub records_in: AtomicU64,
    /// Output records written.
    pub records_out: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub rejected: AtomicU64,
    /// Epochs committed.
    pub epochs: AtomicU64,
    /// The last error, while the task is retrying.
    pub error: Mutex<Option<String>>,
}

/// The consumer group holding a query's committed positions.
pub fn query_group(id: &str) -> String {
    format!("_sluice_query_{id}")
}

/// The dead-letter topic of a query writing `sink_topic`.
pub fn dlq_topic(sink_topic: &str) -> String {
    format!("{sink_topic}.dlq")
}

/// Header naming why a record was rejected.
pub const ERROR_HEADER: &str = "sluice.error";
/// Header naming where a rejected record came from (`topic/partition/offset`).
pub const SOURCE_HEADER: &str = "sluice.source";

#[derive(Debug)]
struct Handle {
    config: RunnerConfig,
    stop: Arc<AtomicBool>,
    stats: Arc<QueryStats>,
    thread: Option<JoinHandle<()>>,
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
        match self.log.create_topic(&dlq, 1, &[]) {
            Ok(()) | Err(LogError::TopicExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(QueryStats::default());
        let config = self.overrides.get(&def.id).unwrap_or(&self.config).clone();
        let task = Task {
            id: def.id.clone(),
            log: self.log.clone(),
            env: self.env.clone(),
            config: config.clone(),
            query,
            sink,
            dlq,
            stop: Arc::clone(&stop),
            stats: Arc::clone(&stats),
            reported_rejected: AtomicU64::new(0),
        };
        let thread = std::thread::Builder::new()
            .name(format!("query-{}", def.id))
            .spawn(move || task.run_with_retries())
            .map_err(|e| SqlError::Invalid(format!("cannot start query {}: {e}", def.id)))?;
        self.running.insert(
            def.id.clone(),
            Handle {
                config,
                stop,
                stats,
                thread: Some(thread),
            },
        );
        Ok(())
    }

    /// Stops a query after committing its current epoch.
    pub fn stop(&mut self, id: &str) {
        if let Some(mut h) = self.running.remove(id) {
            h.stop.store(true, Ordering::SeqCst);
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Stops every query.
    pub fn stop_all(&mut self) {
        let ids: Vec<String> = self.running.keys().cloned().collect();
        for h in self.running.values() {
            h.stop.store(true, Ordering::SeqCst);
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
        self.running.get(id).map(|h| Arc::clone(&h.stats))
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

/// Orders records of several partitions by timestamp before they are processed, like Kafka
/// Streams' partition group: each round takes the buffered record with the smallest timestamp,
/// and stops when a partition that still has unread records has none buffered (its next
/// record might be earlier), so a partition read ahead of another cannot make the other's
/// records look late. Each partition's own order is kept.
#[derive(Debug, Default)]
struct Merger {
    buffers: BTreeMap<u32, std::collections::VecDeque<sluice_log::ConsumerRecord>>,
    buffered: usize,
}

/// Records buffered beyond which the merger processes even while a partition is missing
/// (bounded memory beats perfect order).
const MERGE_BUFFER_LIMIT: usize = 200_000;

impl Merger {
    fn add(&mut self, records: Vec<sluice_log::ConsumerRecord>) {
        self.buffered += records.len();
        for r in records {
            self.buffers.entry(r.partition).or_default().push_back(r);
        }
    }

    /// Up to `max` records in timestamp order; `behind`: partitions with unread records.
    fn take(&mut self, max: usize, behind: &[u32]) -> Vec<sluice_log::ConsumerRecord> {
        let mut out = Vec::new();
        if self.buffers.len() <= 1 && behind.is_empty() {
            // One partition: its order is the order.
            for b in self.buffers.values_mut() {
                let n = b.len().min(max);
                out.extend(b.drain(..n));
            }
            self.buffered -= out.len();
            return out;
        }
        while out.len() < max {
            let waiting = behind
                .iter()
                .any(|p| self.buffers.get(p).is_none_or(|b| b.is_empty()));
            if waiting && self.buffered < MERGE_BUFFER_LIMIT {
                break;
            }
            let next = self
                .buffers
                .iter()
                .filter_map(|(p, b)| b.front().map(|r| (r.timestamp, *p)))
                .min();
            let Some((_, p)) = next else { break };
            if let Some(r) = self.buffers.get_mut(&p).and_then(|b| b.pop_front()) {
                self.buffered -= 1;
                out.push(r);
            }
        }
        out
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
    stop: Arc<AtomicBool>,
    stats: Arc<QueryStats>,
    /// Rejections already reported in the log (one warning per epoch, not per record).
    reported_rejected: AtomicU64,
}

impl Task {
    fn run_with_retries(self) {
        let mut backoff = Duration::from_millis(200);
        while !self.stop.load(Ordering::SeqCst) {
            match self.run() {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(query = %self.id, error = %e, "Query failed; it restarts from its last committed epoch.");
                    *self.stats.error.lock() = Some(e.to_string());
                    let until = Instant::now() + backoff;
                    while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn group(&self) -> String {
        query_group(&self.id)
    }

    fn run(&self) -> Result<()> {
        let store_name = self.id.to_lowercase();
        let mut flow = Dataflow::open(
            self.query.clone(),
            Some((&self.env, &self.log, store_name.as_str())),
        )?;
        let source_topic = self.query.source.topic.clone();
        let partitions = self.log.topic(&source_topic)?.partition_count();
        let mut consumer = self.log.consumer(ConsumerConfig {
            group: Some(self.group()),
            isolation: Isolation::ReadCommitted,
            auto_offset_reset: OffsetReset::Earliest,
            max_poll_records: self.config.max_poll_records,
            enable_auto_commit: false,
            ..ConsumerConfig::default()
        });
        let tps: Vec<TopicPartition> = (0..partitions)
            .map(|p| TopicPartition {
                topic: source_topic.clone(),
                partition: p,
            })
            .collect();
        consumer.assign(&tps)?;
        let exactly_once = self.config.guarantee == Guarantee::ExactlyOnce;
        let mut producer = self
            .config
            .guarantee
            .producer(&self.log, &format!("sluice-query-{}", self.id))?;
        *self.stats.error.lock() = None;
        let mut positions: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        let mut merger = Merger::default();
        let mut open = false;
        let mut epoch_start = Instant::now();
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            if !stopping && !flow.done() {
                merger.add(consumer.poll(Duration::from_millis(50))?);
                let behind: Vec<u32> = if partitions > 1 {
                    consumer
                        .lag()?
                        .into_iter()
                        .filter(|(_, lag)| *lag > 0)
                        .map(|(tp, _)| tp.partition)
                        .collect()
                } else {
                    Vec::new()
                };
                let records = merger.take(self.config.max_poll_records, &behind);
                if !records.is_empty() {
                    if !open {
                        if exactly_once {
                            producer.begin_transaction()?;
                        }
                        open = true;
                        epoch_start = Instant::now();
                    }
                    self.stats
                        .records_in
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                    let inputs: Vec<Input<'_>> = records.iter().map(Input::from).collect();
                    let step = match flow.process(&inputs) {
                        Ok(step) => vec![(step, None)],
                        // An expression failed on some record (a division by zero, a bad
                        // cast) before any state changed: find it record by record.
                        Err(SqlError::Plan(_)) => inputs
                            .iter()
                            .enumerate()
                            .map(
                                |(i, input)| match flow.process(std::slice::from_ref(input)) {
                                    Ok(step) => Ok((step, Some(i))),
                                    Err(SqlError::Plan(e)) => {
                                        Ok((Step::rejecting(flow.schema(), 0, e), Some(i)))
                                    }
                                    Err(e) => Err(e),
                                },
                            )
                            .collect::<Result<Vec<_>>>()?,
                        Err(e) => return Err(e),
                    };
                    for (step, offset) in step {
                        self.write_step(&mut producer, &records, step, offset)?;
                    }
                    for r in &records {
                        positions.insert(
                            TopicPartition {
                                topic: source_topic.clone(),
                                partition: r.partition,
                            },
                            r.offset + 1,
                        );
                    }
                }
            } else if !stopping {
                // LIMIT reached: the query has nothing more to do but stay terminable.
                std::thread::sleep(Duration::from_millis(50));
            }
            if open && (stopping || epoch_start.elapsed() >= self.config.commit_interval) {
                self.commit_epoch(&mut producer, &mut consumer, &mut flow, &positions)?;
                open = false;
            }
            if stopping {
                return Ok(());
            }
        }
    }

    fn write_step(
        &self,
        producer: &mut Producer,
        records: &[sluice_log::ConsumerRecord],
        step: Step,
        record_offset: Option<usize>,
    ) -> Result<()> {
        let encoded = self.sink.encode(&step.batch)?;
        self.stats
            .records_out
            .fetch_add(encoded.len() as u64, Ordering::Relaxed);
        for (((key, value), ts), deleted) in
            encoded.into_iter().zip(step.timestamps).zip(step.deleted)
        {
            if deleted && key.is_none() {
                // Nothing to delete without a key.
                continue;
            }
            producer.send(
                &self.sink.topic,
                Record {
                    key,
                    value: (!deleted).then(|| Bytes::from(value)),
                    headers: Vec::new(),
                    timestamp: ts,
                },
            )?;
        }
        self.stats
            .rejected
            .fetch_add(step.rejected.len() as u64, Ordering::Relaxed);
        for (i, reason) in step.rejected {
            let r = &records[record_offset.unwrap_or(0) + i];
            let source = format!("{}/{}/{}", r.topic, r.partition, r.offset);
            tracing::debug!(query = %self.id, record = %source, reason = %reason, "Record rejected to the dead-letter topic.");
            producer.send_to(
                &self.dlq,
                0,
                Record {
                    key: r.key.clone(),
                    value: r.value.clone(),
                    headers: vec![
                        Header {
                            key: ERROR_HEADER.into(),
                            value: Some(Bytes::from(reason)),
                        },
                        Header {
                            key: SOURCE_HEADER.into(),
                            value: Some(Bytes::from(source)),
                        },
                    ],
                    timestamp: r.timestamp,
                },
            )?;
        }
        Ok(())
    }

    /// Ends the epoch: state changes to the changelogs, positions to the group, commit, then
    /// the stores make the epoch durable locally (the epoch's state snapshot).
    ///
    /// At least once, there is no transaction: outputs and changelog records are flushed,
    /// then the positions are committed to the group, so a crash in between repeats the
    /// epoch's outputs.
    fn commit_epoch(
        &self,
        producer: &mut Producer,
        consumer: &mut sluice_log::Consumer,
        flow: &mut Dataflow,
        positions: &BTreeMap<TopicPartition, i64>,
    ) -> Result<()> {
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
        let offsets: Vec<(TopicPartition, i64)> =
            positions.iter().map(|(tp, o)| (tp.clone(), *o)).collect();
        if self.config.guarantee == Guarantee::AtLeastOnce {
            sluice_log::fault::point("query-before-commit");
            if !offsets.is_empty() {
                consumer.commit_offsets(&offsets)?;
            }
        } else {
            if !offsets.is_empty() {
                producer.send_offsets_to_transaction(&self.group(), &offsets)?;
            }
            sluice_log::fault::point("query-before-commit");
            if let Err(e) = producer.commit_transaction() {
                let _ = producer.abort_transaction();
                flow.abort()?;
                return Err(e.into());
            }
        }
        sluice_log::fault::point("query-after-commit");
        for (i, (store, l)) in flow.stores_mut().into_iter().zip(last).enumerate() {
            let next = l.map_or(store.applied_offset(), |l| l + 1);
            store
                .commit(next)
                .map_err(|e| SqlError::Invalid(format!("query {}: state commit: {e}", self.id)))?;
            if i == 0 {
                // The first store holds the epoch locally, the others not yet.
                sluice_log::fault::point("state-snapshot");
            }
        }
        self.stats.epochs.fetch_add(1, Ordering::Relaxed);
        let rejected = self.stats.rejected.load(Ordering::Relaxed);
        let before = self.reported_rejected.swap(rejected, Ordering::Relaxed);
        if rejected > before {
            tracing::warn!(
                query = %self.id,
                records = rejected - before,
                topic = %self.dlq,
                "Records were rejected to the dead-letter topic; its sluice.error headers say why."
            );
        }
        Ok(())
    }
}
