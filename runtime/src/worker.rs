//! The worker: deploys pipelines (topics, SQL, sources, sinks) over one data directory and runs
//! their tasks until shutdown.
//!
//! ```text
//!  pipeline file ─► topics created ─► SQL statements (Engine: persistent queries)
//!                ├► source task: poll ─► txn{ records, dead letters, position } ─► commit
//!                └► sink task:  poll (read_committed) ─► write ─► flush ─► commit offsets
//! ```
//!
//! A source's position is stored in the compacted topic `__sluice_source_positions` (key
//! `<pipeline>/<source>`) in the same transaction as its records, so a restart resumes exactly
//! after the last committed records. A failing task restarts with exponential backoff; its
//! last error and restart count are in [`TaskStatus`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use sluice_connectors::file::{FileSink, FileSource};
use sluice_connectors::{Sink, Source};
use sluice_log::{
    ConsumerConfig, Header, Isolation, Log, LogError, OffsetReset, ProducerConfig, Record,
    TopicPartition,
};
use sluice_sql::engine::Engine;

use crate::pipeline::Pipeline;

/// The topic holding source positions.
pub const POSITIONS_TOPIC: &str = "__sluice_source_positions";

/// What a task has done and how it is.
#[derive(Debug, Default)]
pub struct TaskStatus {
    /// Records read (sources: from outside; sinks: from the topic).
    pub records_in: AtomicU64,
    /// Records written (sources: to the topic; sinks: outside).
    pub records_out: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub rejected: AtomicU64,
    /// Restarts after failures.
    pub restarts: AtomicU64,
    /// The last error, while it is being retried.
    pub error: Mutex<Option<String>>,
}

/// One running task.
#[derive(Debug)]
pub struct Task {
    /// `source <name>` or `sink <name>`.
    pub name: String,
    /// Its counters.
    pub status: Arc<TaskStatus>,
    thread: Option<JoinHandle<()>>,
}

/// A deployed pipeline.
#[derive(Debug)]
pub struct Deployed {
    /// Pipeline name.
    pub name: String,
    /// The file it came from.
    pub path: std::path::PathBuf,
    /// Its tasks.
    pub tasks: Vec<Task>,
    stop: Arc<AtomicBool>,
}

impl Deployed {
    /// Stops its tasks (each commits what it has) and waits for them.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in &mut self.tasks {
            if let Some(h) = t.thread.take() {
                let _ = h.join();
            }
        }
    }
}

/// The worker.
#[derive(Debug)]
pub struct Worker {
    log: Log,
    engine: Engine,
    pipelines: Vec<Deployed>,
}

impl Worker {
    /// A worker over `log`, with `engine` running the SQL.
    pub fn new(log: &Log, engine: Engine) -> Worker {
        Worker {
            log: log.clone(),
            engine,
            pipelines: Vec::new(),
        }
    }

    /// The deployed pipelines.
    pub fn pipelines(&self) -> &[Deployed] {
        &self.pipelines
    }

    /// The SQL engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops the pipeline deployed from `path`, if any (its topics, SQL objects, positions
    /// and offsets stay, so deploying it again resumes).
    pub fn undeploy(&mut self, path: &std::path::Path) -> Option<String> {
        let i = self.pipelines.iter().position(|d| d.path == path)?;
        let mut d = self.pipelines.remove(i);
        d.stop();
        Some(d.name)
    }

    /// Creates a pipeline's topics, runs its SQL and starts its sources and sinks. A
    /// pipeline of the same name from another file is refused.
    pub fn deploy(&mut self, p: &Pipeline) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| format!("pipeline {}: {e}", p.name);
        if let Some(d) = self.pipelines.iter().find(|d| d.name == p.name) {
            return Err(err(&format!("the name is taken by {}", d.path.display())));
        }
        let stop = Arc::new(AtomicBool::new(false));
        for t in &p.config.topics {
            let config: Vec<(String, String)> = t
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            match self
                .log
                .create_topic(t.name.get_ref(), t.partitions, &config)
            {
                Ok(()) | Err(LogError::TopicExists(_)) => {}
                Err(e) => return Err(err(&e)),
            }
        }
        let dlq = format!("{}.dlq", p.name);
        for topic in [dlq.as_str(), POSITIONS_TOPIC] {
            let config: &[(String, String)] = if topic == POSITIONS_TOPIC {
                &[("cleanup.policy".to_string(), "compact".to_string())]
            } else {
                &[]
            };
            match self.log.create_topic(topic, 1, config) {
                Ok(()) | Err(LogError::TopicExists(_)) => {}
                Err(e) => return Err(err(&e)),
            }
        }
        if let Some(sql) = &p.config.sql {
            self.engine.execute(sql).map_err(|e| err(&e))?;
        }
        let mut tasks = Vec::new();
        for s in &p.config.sources {
            let name = s.name.get_ref().clone();
            self.log
                .topic(&s.topic)
                .map_err(|e| err(&format!("source {name}: {e}")))?;
            let Some(file) = &s.file else { continue };
            let source = FileSource::new(file.clone(), p.base())
                .map_err(|e| err(&format!("source {name}: {e}")))?;
            let ctx = SourceTask {
                log: self.log.clone(),
                key: format!("{}/{name}", p.name),
                topic: s.topic.clone(),
                dlq: dlq.clone(),
                stop: Arc::clone(&stop),
                status: Arc::new(TaskStatus::default()),
            };
            tasks.push(spawn(
                format!("source {name}"),
                Arc::clone(&ctx.status),
                Box::new(move || ctx.run_with_retries(Box::new(source))),
            ));
        }
        for s in &p.config.sinks {
            let name = s.name.get_ref().clone();
            self.log
                .topic(&s.topic)
                .map_err(|e| err(&format!("sink {name}: {e}")))?;
            let Some(file) = &s.file else { continue };
            let sink = FileSink::new(file.clone(), p.base())
                .map_err(|e| err(&format!("sink {name}: {e}")))?;
            let ctx = SinkTask {
                log: self.log.clone(),
                group: format!("sluice-sink-{}-{name}", p.name),
                topic: s.topic.clone(),
                stop: Arc::clone(&stop),
                status: Arc::new(TaskStatus::default()),
            };
            tasks.push(spawn(
                format!("sink {name}"),
                Arc::clone(&ctx.status),
                Box::new(move || ctx.run_with_retries(Box::new(sink))),
            ));
        }
        self.pipelines.push(Deployed {
            name: p.name.clone(),
            path: p.path.clone(),
            tasks,
            stop,
        });
        Ok(())
    }

    /// Stops every task (each commits what it has) and the persistent queries.
    pub fn shutdown(&mut self) {
        for p in &self.pipelines {
            p.stop.store(true, Ordering::SeqCst);
        }
        for p in &mut self.pipelines {
            p.stop();
        }
        self.engine.shutdown();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn(name: String, status: Arc<TaskStatus>, body: Box<dyn FnOnce() + Send>) -> Task {
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(body)
        .ok();
    Task {
        name,
        status,
        thread,
    }
}

/// Runs `attempt` until it returns Ok or `stop` is set, backing off after failures.
fn with_retries(
    stop: &AtomicBool,
    status: &TaskStatus,
    what: &str,
    mut attempt: impl FnMut() -> Result<(), String>,
) {
    let mut backoff = Duration::from_millis(200);
    while !stop.load(Ordering::SeqCst) {
        match attempt() {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(task = what, error = %e, "Task failed; it restarts from its last commit.");
                *status.error.lock() = Some(e);
                status.restarts.fetch_add(1, Ordering::Relaxed);
                let until = Instant::now() + backoff;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

struct SourceTask {
    log: Log,
    /// `<pipeline>/<source>`: the position key and the transactional id.
    key: String,
    topic: String,
    dlq: String,
    stop: Arc<AtomicBool>,
    status: Arc<TaskStatus>,
}

impl SourceTask {
    fn run_with_retries(self, mut source: Box<dyn Source>) {
        let status = Arc::clone(&self.status);
        with_retries(&self.stop, &status, &self.key.clone(), || {
            self.run(source.as_mut())
        });
    }

    /// The position committed last for this source.
    fn committed_position(&self) -> Result<Option<Bytes>, String> {
        let mut last = None;
        self.log
            .read_all(POSITIONS_TOPIC, 0, |_, r| {
                if r.key.as_deref() == Some(self.key.as_bytes()) {
                    last = r.value;
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(last)
    }

    fn run(&self, source: &mut dyn Source) -> Result<(), String> {
        let position = self.committed_position()?;
        source
            .open(position.as_deref())
            .map_err(|e| e.to_string())?;
        let mut producer = self
            .log
            .transactional_producer(
                &format!("sluice-source-{}", self.key),
                ProducerConfig::default(),
            )
            .map_err(|e| e.to_string())?;
        *self.status.error.lock() = None;
        while !self.stop.load(Ordering::SeqCst) {
            let batch = source
                .poll(10_000, Duration::from_millis(200))
                .map_err(|e| e.to_string())?;
            let Some(position) = batch.position else {
                continue;
            };
            producer.begin_transaction().map_err(|e| e.to_string())?;
            let n = batch.records.len() as u64;
            for r in batch.records {
                producer.send(&self.topic, r).map_err(|e| e.to_string())?;
            }
            let rejected = batch.rejected.len() as u64;
            for r in batch.rejected {
                producer
                    .send(
                        &self.dlq,
                        Record {
                            key: None,
                            value: Some(Bytes::from(r.raw)),
                            headers: vec![
                                Header {
                                    key: "sluice.error".into(),
                                    value: Some(Bytes::from(r.reason)),
                                },
                                Header {
                                    key: "sluice.source".into(),
                                    value: Some(Bytes::from(r.origin)),
                                },
                            ],
                            timestamp: sluice_log::record::now_ms(),
                        },
                    )
                    .map_err(|e| e.to_string())?;
            }
            producer
                .send(
                    POSITIONS_TOPIC,
                    Record {
                        key: Some(Bytes::from(self.key.clone())),
                        value: Some(Bytes::from(position)),
                        headers: Vec::new(),
                        timestamp: sluice_log::record::now_ms(),
                    },
                )
                .map_err(|e| e.to_string())?;
            producer.commit_transaction().map_err(|e| e.to_string())?;
            self.status
                .records_in
                .fetch_add(n + rejected, Ordering::Relaxed);
            self.status.records_out.fetch_add(n, Ordering::Relaxed);
            self.status.rejected.fetch_add(rejected, Ordering::Relaxed);
            if rejected > 0 {
                tracing::warn!(source = %self.key, records = rejected, topic = %self.dlq, "Input rejected to the dead-letter topic; its sluice.error headers say why.");
            }
        }
        Ok(())
    }
}

struct SinkTask {
    log: Log,
    group: String,
    topic: String,
    stop: Arc<AtomicBool>,
    status: Arc<TaskStatus>,
}

/// How often a sink makes its output durable and commits its offsets.
const SINK_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

impl SinkTask {
    fn run_with_retries(self, mut sink: Box<dyn Sink>) {
        let status = Arc::clone(&self.status);
        with_retries(&self.stop, &status, &self.group.clone(), || {
            self.run(sink.as_mut())
        });
    }

    fn run(&self, sink: &mut dyn Sink) -> Result<(), String> {
        let partitions = self
            .log
            .topic(&self.topic)
            .map_err(|e| e.to_string())?
            .partition_count();
        let mut consumer = self.log.consumer(ConsumerConfig {
            group: Some(self.group.clone()),
            isolation: Isolation::ReadCommitted,
            auto_offset_reset: OffsetReset::Earliest,
            enable_auto_commit: false,
            max_poll_records: 10_000,
            ..ConsumerConfig::default()
        });
        let tps: Vec<TopicPartition> = (0..partitions)
            .map(|p| TopicPartition {
                topic: self.topic.clone(),
                partition: p,
            })
            .collect();
        consumer.assign(&tps).map_err(|e| e.to_string())?;
        *self.status.error.lock() = None;
        let mut positions: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        let mut last_commit = Instant::now();
        let mut pending = false;
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            if !stopping {
                let records = consumer
                    .poll(Duration::from_millis(100))
                    .map_err(|e| e.to_string())?;
                if !records.is_empty() {
                    sink.write(&records).map_err(|e| e.to_string())?;
                    self.status
                        .records_in
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                    self.status
                        .records_out
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                    for r in &records {
                        positions.insert(
                            TopicPartition {
                                topic: self.topic.clone(),
                                partition: r.partition,
                            },
                            r.offset + 1,
                        );
                    }
                    pending = true;
                }
            }
            if pending && (stopping || last_commit.elapsed() >= SINK_COMMIT_INTERVAL) {
                // Durable first, then the offsets: a crash in between replays, and the sink
                // rewrites the same output.
                sink.flush().map_err(|e| e.to_string())?;
                let offsets: Vec<(TopicPartition, i64)> =
                    positions.iter().map(|(tp, o)| (tp.clone(), *o)).collect();
                consumer
                    .commit_offsets(&offsets)
                    .map_err(|e| e.to_string())?;
                pending = false;
                last_commit = Instant::now();
            }
            if stopping {
                return Ok(());
            }
        }
    }
}
